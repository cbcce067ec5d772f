"""The training loop, the two halves of a step, checkpoints and config checks."""

from .client import SplitClient
from .config import ConfigError, compose, validate
from .run import fit
from .server import ServerHalf, Session, soft_cross_entropy

__all__ = ["ConfigError", "compose", "SplitClient", "ServerHalf", "Session", "fit", "soft_cross_entropy", "validate"]
