"""synclearn.chat"""
