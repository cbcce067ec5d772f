"""Schemes of several clients on one server, found by name (``clients.scheme``). Importing this package
imports every module in it, so a new scheme is one file here with a :func:`register_scheme` class."""

import importlib
import pkgutil

from .base import SCHEMES, RoundPlan, Scheme, build_scheme, local_steps, participants, register_scheme

for _module in pkgutil.iter_modules(__path__):  # each registers its scheme
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SCHEMES", "RoundPlan", "Scheme", "build_scheme", "local_steps", "participants", "register_scheme"]
