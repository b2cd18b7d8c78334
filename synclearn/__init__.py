"""synclearn: continual on-device learning.

A model keeps answering while it learns from its own use. See README.md and the
subpackages: ``model`` (networks), ``learn`` (how weights change), ``memory``
(interaction log, replay, forgetting), ``chat`` (how people use it), ``eval``.
"""

__version__ = "0.1.0"
