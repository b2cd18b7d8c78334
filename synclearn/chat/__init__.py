"""How people use synclearn: chat sessions, the terminal chat and the OpenAI-compatible server.

The server's names (``create_app``, ``RunningServer``, ``ServerLimits``) need the ``serve``
extra (fastapi, uvicorn); they are imported on first use.
"""

from synclearn.chat.checkpoint import CheckpointStore
from synclearn.chat.runtime import Runtime, ServingLoad
from synclearn.chat.session import ChatSession, Reply
from synclearn.chat.terminal import TerminalChat, run_terminal

_SERVER_NAMES = ("create_app", "RunningServer", "ServerLimits", "serve")

__all__ = ["ChatSession", "CheckpointStore", "Reply", "Runtime", "ServingLoad", "TerminalChat", "run_terminal",
           *_SERVER_NAMES]


def __getattr__(name: str):
    if name in _SERVER_NAMES:
        from synclearn.chat import server

        return getattr(server, name)
    raise AttributeError(f"module 'synclearn.chat' has no attribute {name!r}")
