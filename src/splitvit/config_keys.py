"""The keys the shipped configs define and their defaults, read from the option files alone.

Light on purpose (PyYAML, no torch): ``splitvit report`` reads every run's ``config.yaml`` through
:func:`with_defaults`, and its start-up should not pay for the training stack.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import yaml

GROUPS = ("method", "codec", "compression_schedule", "dataset", "model", "link", "logger", "channel", "finetune")  # config groups whose option files hold a key's subtree


def leaves(tree, prefix: str = "") -> dict:
    """A nested config as flat dotted keys (``train.lr``), lists kept as values."""
    out = {}
    for k, v in (tree or {}).items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: dict) -> dict:
    """The inverse of :func:`leaves`: flat dotted keys back into a nested config."""
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def under(flat: dict, keys) -> dict:
    """The leaves of ``flat`` at or below any of ``keys`` (``method`` takes ``method.name``, ``method.k``...)."""
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(f"{key}.") for key in keys)}


def _conf():
    return resources.files("splitvit") / "conf"


@lru_cache(maxsize=1)
def known_keys() -> tuple[dict, dict[str, dict[str, dict]]]:
    """The keys the shipped configs define, with their default values: ``(top-level keys, {group: {option: keys}})``."""
    top = yaml.safe_load(_conf().joinpath("config.yaml").read_text())
    top = leaves({k: v for k, v in top.items() if k not in ("defaults", "hydra")})
    groups = {}
    for group in GROUPS:
        groups[group] = {f.name[:-5]: leaves(yaml.safe_load(f.read_text()), f"{group}.")
                         for f in _conf().joinpath(group).iterdir() if f.name.endswith(".yaml")}
    return top, groups


@lru_cache(maxsize=1)
def default_options() -> dict[str, str]:
    """The option each config group takes where a config chooses none: ``config.yaml``'s defaults list."""
    listed = yaml.safe_load(_conf().joinpath("config.yaml").read_text())["defaults"]
    return {group: item[group] for item in listed if isinstance(item, dict) for group in item if group in GROUPS}


def option_key(group: str) -> str:
    """The key that names a group's option: ``link.kind``, ``method.name``."""
    return f"{group}.{'kind' if group == 'link' else 'name'}"


def with_defaults(flat: dict) -> dict:
    """A run's config as flat dotted leaves, with every key it lacks set to its default: the top level's,
    and each group's for the option the run chose (the default option for a group the run has no key
    of, as a checkpoint from before channels). That is what the code did before the key existed.
    A group whose option splitvit does not ship (a user's own method) has no defaults to take."""
    top, groups = known_keys()
    out = {**top, **flat}
    for group in GROUPS:
        has_group = any(k.startswith(f"{group}.") for k in flat)
        option = flat.get(option_key(group)) if has_group else default_options()[group]
        for key, value in (groups[group].get(option, {}) if isinstance(option, str) else {}).items():
            out.setdefault(key, value)
    return out


def load_run_config(path) -> dict:
    """A run's saved ``config.yaml`` as a nested dict (interpolations kept), with the keys it predates
    at their defaults: what that run ran with, readable by today's code."""
    from omegaconf import OmegaConf

    return nest(with_defaults(leaves(OmegaConf.to_container(OmegaConf.load(path), resolve=False))))


# ---- descriptions: the comment on each key's line in its option file is its meaning (one source for
# `splitvit train --help` and the docs' configuration reference)

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")
_DEFAULT_ITEM = re.compile(r"^\s*-\s*(?:override\s+)?(?P<group>[\w/]+):\s*(?P<option>\S+)\s*(?:#\s*(?P<doc>.*))?$")


def _split_comment(rest: str) -> str:
    """The comment of a YAML line's value part: what follows the first `` #`` outside quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1:].strip()
    return ""


def comments(text: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """An option file's text -> (its opening comment, ``{dotted key: the comment on its line}``, and for
    ``config.yaml`` the comment on each group's line of the defaults list)."""
    head, docs, groups, stack = [], {}, {}, []
    seen_key = False
    for line in text.splitlines():
        if not seen_key and line.startswith("#"):
            if not line.startswith("# @package"):
                head.append(line.lstrip("#").strip())
            continue
        item = _DEFAULT_ITEM.match(line)
        if item and stack and stack[-1][1] == "defaults":
            if item.group("doc"):
                groups[item.group("group")] = item.group("doc").strip()
            continue
        m = _KEY.match(line)
        if not m:
            continue
        seen_key = True
        indent = len(m.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group("key")))
        doc = _split_comment(m.group("rest"))
        if doc:
            docs[".".join(k for _, k in stack)] = doc
    return " ".join(head).strip(), docs, groups


@lru_cache(maxsize=1)
def described() -> dict:
    """Every key the shipped configs define, with its default and its meaning: ``{"top": {key: (default,
    doc)}, "groups": {group: {"doc": ..., "options": {option: {"doc": ..., "keys": {key: (default, doc)}}}}}}``."""
    top, groups = known_keys()
    text = _conf().joinpath("config.yaml").read_text()
    _, top_docs, group_docs = comments(text)
    out = {"top": {k: (v, top_docs.get(k, "")) for k, v in top.items()}, "groups": {}}
    for group in GROUPS:
        files = sorted((f for f in _conf().joinpath(group).iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
        parsed = {f.name[:-5]: comments(f.read_text()) for f in files}
        shared: dict[str, str] = {}  # a key described in one option file describes it in the others too
        for _, docs, _ in (parsed.values() if group != "method" else ()):  # (a method's keys are its own)
            for k, doc in docs.items():
                shared.setdefault(k, doc)
        options = {}
        for option, (head, docs, _) in parsed.items():
            options[option] = {"doc": head, "keys": {k: (v, docs.get(k.removeprefix(f"{group}."))
                                                         or shared.get(k.removeprefix(f"{group}."), ""))
                                                     for k, v in groups[group][option].items()}}
        out["groups"][group] = {"doc": group_docs.get(group, ""), "default": default_options().get(group), "options": options}
    return out


def _value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def help_text() -> str:
    """``splitvit train --help``: every config group with its options, and every key with its default and meaning."""
    d = described()
    out = ["splitvit train [group=option ...] [key=value ...]: one split-learning experiment (Hydra overrides).",
           "", "Config groups (group=option; the default first):"]
    for group, g in d["groups"].items():
        opts = sorted(g["options"], key=lambda o: o != g["default"])
        out.append(f"  {group}: {', '.join(opts)}" + (f"    # {g['doc']}" if g["doc"] else ""))
    out += ["", "Keys (key=value), with their defaults:"]
    for key, (v, doc) in d["top"].items():
        out.append(f"  {key}={_value(v)}" + (f"    # {doc}" if doc else ""))
    for group, g in d["groups"].items():
        for option, o in g["options"].items():
            keys = {k: kv for k, kv in o["keys"].items() if not k.endswith((".name", ".kind"))}
            if not keys:
                continue
            out.append(f"  {group}={option}:" + (f"    # {o['doc']}" if o["doc"] else ""))
            for key, (v, doc) in keys.items():
                out.append(f"    {key}={_value(v)}" + (f"    # {doc}" if doc else ""))
    out += ["", "Experiments: +experiment=cpu/<name> or paper/<name> (splitvit plan lists their jobs).",
            "Hydra's own flags (--multirun, --cfg job, ...) work as in any Hydra app."]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The configuration reference page of the docs (``docs/reference/configuration.md``), generated."""
    d = described()
    out = ["# Configuration", "",
           "<!-- generated by `python -m splitvit.config_keys > docs/reference/configuration.md` from the comments of "
           "the shipped config files, the same source as `splitvit train --help`; a test checks it is current -->", "",
           "`splitvit train` composes its configuration with [Hydra](https://hydra.cc): pick an option of each "
           "group with `group=option`, set any key with `key=value`. Every key below, with its default and its "
           "meaning, comes from the comments of the config files that ship with splitvit.", "",
           "## Top-level keys", "", "| key | default | meaning |", "| --- | --- | --- |"]
    for key, (v, doc) in d["top"].items():
        out.append(f"| `{key}` | `{_cell(_value(v))}` | {_cell(doc)} |")
    for group, g in d["groups"].items():
        out += ["", f"## `{group}=`", ""]
        if g["doc"]:
            out += [g["doc"][0].upper() + g["doc"][1:] + ".", ""]
        out += [f"Options: {', '.join(f'`{o}`' for o in g['options'])} (default `{g['default']}`).", ""]
        for option, o in g["options"].items():
            keys = {k: kv for k, kv in o["keys"].items() if not k.endswith((".name", ".kind"))}
            out += [f"### `{group}={option}`", ""]
            if o["doc"]:
                out += [o["doc"], ""]
            if keys:
                out += ["| key | default | meaning |", "| --- | --- | --- |"]
                out += [f"| `{k}` | `{_cell(_value(v))}` | {_cell(doc)} |" for k, (v, doc) in keys.items()]
                out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
