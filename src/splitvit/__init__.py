"""splitvit: communication-efficient split learning of Vision Transformers."""

__version__ = "0.1.0"
