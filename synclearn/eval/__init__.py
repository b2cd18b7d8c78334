"""synclearn.eval"""
