"""How people use synclearn: chat sessions (and, later, the terminal chat and the server)."""

from synclearn.chat.session import ChatSession, Reply

__all__ = ["ChatSession", "Reply"]
