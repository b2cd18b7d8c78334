"""synclearn.learn"""
