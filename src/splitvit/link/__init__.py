"""Links carry bytes between the client and the server; they never look inside a message."""

from .inprocess import InProcessLink, Link
from .shaping import LinkModel

__all__ = ["InProcessLink", "Link", "LinkModel"]
