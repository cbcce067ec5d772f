"""One syntax for every subcommand: ``key=value``, as ``splitvit train`` takes Hydra overrides.

``splitvit report DIR out=DIR``, ``splitvit export RUN_DIR out=model.safetensors``, ``splitvit show
RUN_DIR clusters=6``: :class:`KeyValueParser` is an :class:`argparse.ArgumentParser` that reads
``key=value`` for each of its ``--key`` options (and ``flag=true`` for a switch), and shows them so in
its help. ``--key value`` still works.
"""

from __future__ import annotations

import argparse
import re


def plain(doc: str | None) -> str:
    """A module docstring as terminal text: reST roles and double backquotes dropped."""
    text = re.sub(r":\w+:`~?\.?([^`]+)`", r"\1", doc or "")
    return text.replace("``", "")


class KeyValueParser(argparse.ArgumentParser):
    """An ``argparse`` parser that also takes ``key=value`` words (``out=DIR``, ``energy.device=NAME``), the
    syntax of ``splitvit train``, so every subcommand reads its options one way."""
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def _options(self) -> dict[str, argparse.Action]:
        return {s[2:]: a for a in self._actions for s in a.option_strings if s.startswith("--") and s != "--help"}

    def rewrite(self, argv: list[str]) -> list[str]:
        """``key=value`` words of the parser's options as the ``--key value`` argparse reads."""
        options, out = self._options(), []
        for arg in argv:
            key, eq, value = arg.partition("=")
            action = options.get(key) if eq and not arg.startswith("-") else None
            if action is None:
                out.append(arg)
            elif action.nargs == 0:  # a switch: key=true, key=false
                if value.lower() not in ("true", "false"):
                    self.error(f"{key}= takes true or false, got {value!r}")
                out += [f"--{key}"] if value.lower() == "true" else []
            else:
                out += [f"--{key}", value]
        return out

    def parse_args(self, args=None, namespace=None):
        """Parse ``args`` (``key=value`` words included)."""
        import sys

        return super().parse_args(self.rewrite(list(sys.argv[1:] if args is None else args)), namespace)

    def format_usage(self) -> str:
        """The usage line, options spelt ``key=VALUE``."""
        return self._key_values(super().format_usage())

    def format_help(self) -> str:
        """The help text, options spelt ``key=VALUE``."""
        return self._key_values(super().format_help())

    def _key_values(self, text: str) -> str:
        for key, action in self._options().items():
            if action.nargs == 0:
                text = re.sub(rf"--{re.escape(key)}\b(?![=\w-])", f"{key}=true", text)
            else:
                text = re.sub(rf"--{re.escape(key)} ([A-Z_]+)", rf"{key}=\1", text)
        return text
