"""``splitvit plan +experiment=NAME [overrides]``: the jobs a multirun would launch, without running them.

Expands the experiment's ``hydra.sweeper.params`` and any sweep on the command line (``a=1,2``,
``range(3)``) exactly as Hydra's basic sweeper does (command-line values win over the experiment's),
and checks every job's config so that a sweep with an impossible setting is caught before launch.
"""

from __future__ import annotations

import argparse
import itertools
from importlib import resources

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from .train.config import ConfigError, validate


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


def jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of each job of ``splitvit train --multirun <overrides>``, checked."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_module("splitvit.conf", version_base=None):
        base = compose("config", overrides=fixed, return_hydra_config=True)
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
        for combo in itertools.product(*axes.values()):
            job = [*keep, *(f"{k}={v}" for k, v in zip(axes, combo))]
            cfg = compose("config", overrides=job)
            with open_dict(cfg):
                cfg.device = "cpu"  # the plan is made where the jobs will not run
            try:
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(f"job {' '.join(job)}: {e}") from None
            out.append(job)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="splitvit plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="as for splitvit train --multirun, e.g. +experiment=paper/main_adc seed=0")
    ap.add_argument("--all", action="store_true", help="list every shipped experiment and its number of jobs")
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
        print(f"splitvit plan: error: {e}")
        return 2
    except Exception as e:  # noqa: BLE001 - Hydra's errors (unknown group, bad override) are the user's to fix
        print(f"splitvit plan: error: {e}")
        return 2
    for i, job in enumerate(listed):
        print(f"{i:4d}  {' '.join(job)}")
    print(f"{len(listed)} jobs; run them with: splitvit train --multirun {' '.join(args.overrides)}")
    return 0
