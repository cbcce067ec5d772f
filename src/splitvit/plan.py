"""``splitvit plan +experiment=NAME [overrides]``: the jobs a multirun would launch, without running them.

Expands the experiment's ``hydra.sweeper.params`` and any sweep on the command line (``a=1,2``,
``range(3)``) exactly as Hydra's basic sweeper does (command-line values win over the experiment's),
and checks every job's config so that a sweep with an impossible setting is caught before launch.
"""

from __future__ import annotations

import argparse

import copy
import itertools
import sys
from importlib import resources

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

from .argv import KeyValueParser, plain
from .train.config import ConfigError, check_keys, validate


def experiments() -> list[str]:
    """Every experiment config shipped with splitvit, as ``+experiment=`` takes it."""
    root = resources.files("splitvit") / "conf" / "experiment"
    found = []
    for group in sorted(p.name for p in root.iterdir() if p.is_dir()):
        found += [f"{group}/{f.name[:-5]}" for f in sorted(root.joinpath(group).iterdir(), key=lambda f: f.name)
                  if f.name.endswith(".yaml") and f.name != "common.yaml"]
    return found


def _values(override) -> list[str]:
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]


def _groups() -> set[str]:
    root = resources.files("splitvit") / "conf"
    return {p.name for p in root.iterdir() if p.is_dir()}


class Composer:
    """Hydra's compose of many jobs that differ mostly in values (a sweep's ``method.compression=...``).
    Composing reads and merges every config file of the defaults list again: about 0.25 s a job. A
    job's config is its *structure* (the group choices, additions and deletions: what Hydra composes
    from files) with its plain ``key=value`` changes set on it, as Hydra sets them after composing; so
    each structure is composed once and copied. A job whose values cannot be set so is composed by
    Hydra, which gives its own error."""

    def __init__(self):
        self.parser = OverridesParser.create()
        self.groups = _groups()
        self.cache: dict[tuple[str, ...], DictConfig] = {}

    def _value(self, o) -> bool:
        key = o.key_or_group
        return (o.type == OverrideType.CHANGE and o.package is None and not key.startswith("hydra")
                and ("." in key or key not in self.groups))

    def __call__(self, job: list[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(job)
        structure = tuple(o.input_line for o in parsed if not self._value(o))
        if structure not in self.cache:
            self.cache[structure] = compose("config", overrides=list(structure))
        cfg = copy.deepcopy(self.cache[structure])
        try:
            for o in parsed:
                if self._value(o):
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
        except Exception:  # noqa: BLE001 - an unknown key, a value that does not fit: Hydra says which
            return compose("config", overrides=job)
        return cfg


def jobs(overrides: list[str], check: bool = True) -> list[list[str]]:
    """The override list of each job of ``splitvit train --multirun <overrides>``: composed (which refuses
    unknown keys and groups), and with ``check`` every job's config validated too."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_module("splitvit.conf", version_base=None):
        try:
            base = compose("config", overrides=fixed, return_hydra_config=True)
        except Exception as e:  # noqa: BLE001 - as below
            raise ConfigError(composition_error(e, fixed)) from None
        params = base.hydra.sweeper.get("params")  # None when neither experiment nor command line sweeps
        params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
        axes: dict[str, list[str]] = {}
        for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()]):
            axes[o.key_or_group] = _values(o)
        for o in parsed:  # the command line wins over the experiment's sweep
            if o.is_sweep_override() or o.key_or_group in axes:
                axes[o.key_or_group] = _values(o)
        keep = [o.input_line for o in parsed if not o.is_sweep_override() and o.key_or_group not in axes]
        out = []
        composer = Composer()
        for combo in itertools.product(*axes.values()):
            job = [*keep, *(f"{k}={v}" for k, v in zip(axes, combo))]
            try:
                cfg = composer(job)
            except Exception as e:  # noqa: BLE001 - Hydra's composition errors: a typo, an unknown group option
                raise ConfigError(composition_error(e, job)) from None
            if not check:  # the keys only: values are each job's to check when it runs
                try:
                    check_keys(cfg)
                except ConfigError as e:
                    raise ConfigError(f"{e}" if len(out) == 0 else f"job {' '.join(job)}: {e}") from None
                out.append(job)
                continue
            with open_dict(cfg):
                cfg.device = "cpu"  # the plan is made where the jobs will not run
            try:
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(f"job {' '.join(job)}: {e}") from None
            out.append(job)
    return out


def composition_error(e: Exception, job: list[str]) -> str:
    """Hydra's message, made to say what to do: an unknown key gets the nearest valid names
    (Hydra itself advises ``+key=value``, which would run with the key silently ignored)."""
    import difflib
    import re

    from .config_keys import GROUPS, known_keys

    text = str(e)
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        key = m.group(1)
        full = next((o.split("=", 1)[0].lstrip("+~") for o in job if o.split("=", 1)[0].lstrip("+~").endswith(key)), key)
        top, groups = known_keys()
        group = full.split(".", 1)[0]
        choice = next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0] == group), None)
        if group in GROUPS:
            options = groups[group]
            choice = choice if choice in options else None
            names = list(options[choice]) if choice else [k for keys in options.values() for k in keys]
        else:
            names = list(top)
        close = difflib.get_close_matches(full, names, n=3, cutoff=0.6)
        if group in GROUPS and choice and full not in names:
            valid = ", ".join(k.removeprefix(group + ".") for k in names if not k.endswith(".name") and not k.endswith(".kind"))
            return f"{group}={choice} has no key {full.removeprefix(group + '.')}" +                 (f"; did you mean {' or '.join(close)}?" if close else "") + f" (its keys: {valid})"
        owners = [c for c, keys in groups[group].items() if full in keys] if group in GROUPS else []
        if owners:  # a key of another choice of the group than the one in use
            return (f"{full} is a key of {' and '.join(f'{group}={c}' for c in owners)}, not of the {group} in use: "
                    f"choose one of those ({group}={owners[0]} {full}=...)")
        return f"unknown key {full}" + (f"; did you mean {' or '.join(close)}?" if close else "") + \
            " (splitvit train --help lists every key)"
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:
        group, choice = m.groups()
        options = re.findall(r"^\s+(\S+)\s*$", text.split("Available options", 1)[-1], flags=re.M)
        if group == "experiment":
            options = experiments()
        if options:
            close = difflib.get_close_matches(choice, options, n=1, cutoff=0.5)
            return (f"{group}={choice!r} is not allowed; choose one of: {', '.join(options)}"
                    + (f" (did you mean {close[0]}?)" if close else ""))
    first = text.strip().splitlines()
    return " ".join(line.strip() for line in first[:4] if line.strip())


def main(argv: list[str]) -> int:
    """``splitvit plan [--multirun] [--all] [overrides]``: the jobs of a sweep, each composed and checked,
    without running any."""
    ap = KeyValueParser(prog="splitvit plan", description=plain(__doc__))
    ap.add_argument("overrides", nargs="*", help="as for splitvit train --multirun, e.g. +experiment=paper/main_adc seed=0")
    ap.add_argument("--all", action="store_true", help="list every shipped experiment and its number of jobs")
    ap.add_argument("--multirun", "-m", action="store_true", help=argparse.SUPPRESS)  # as given to train: a plan is one
    args = ap.parse_args(argv)
    try:
        if args.all or not args.overrides:
            total = 0
            for name in experiments():
                n = len(jobs([f"+experiment={name}", *args.overrides]))
                total += n
                print(f"{n:5d}  splitvit train --multirun +experiment={name}")
            print(f"{total:5d}  jobs in all")
            return 0
        listed = jobs(args.overrides)
    except ConfigError as e:
        print(f"splitvit plan: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - Hydra's errors (a bad override) are the user's to fix
        print(f"splitvit plan: error: {e}", file=sys.stderr)
        return 2
    for i, job in enumerate(listed):
        print(f"{i:4d}  {' '.join(job)}")
    print(f"{len(listed)} jobs; run them with: splitvit train --multirun {' '.join(args.overrides)}")
    return 0
