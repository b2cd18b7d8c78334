"""synclearn.memory"""
