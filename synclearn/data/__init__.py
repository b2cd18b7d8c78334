"""Built-in data: everything here is generated or shipped, nothing is downloaded."""

from synclearn.data.builtin import builtin_text, chat_pairs, encode_corpus

__all__ = ["builtin_text", "chat_pairs", "encode_corpus"]
