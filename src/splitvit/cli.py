"""The ``splitvit`` command. ``splitvit train [key=value ...]`` runs one experiment (Hydra overrides)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

FAILED: list[tuple[Path, str]] = []  # the jobs of a sweep that failed, with why


def job_dir(num, overrides: str = "") -> str:
    """A sweep job's folder: its number, then its settings (``0_method.compression=0.1,seed=0``), without
    the ones that name a path, and short enough for any file system."""
    kept = [o for o in str(overrides or "").split(",") if o and "/" not in o and "\\" not in o]
    name = f"{num}_{','.join(kept)}" if kept else str(num)
    return name if len(name) <= 120 else name[:117] + "..."


OmegaConf.register_new_resolver("splitvit_job_dir", job_dir, replace=True)


def _name_jobs_by_their_sweep(args: list[str]) -> str:
    """The override that leaves out of each job's folder name the keys every job of the sweep shares."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed = {"run_dir", "dataset.root", "model.checkpoint", "hydra.sweep.dir", "+experiment", "experiment"}
    try:
        for o in OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")]):
            if not o.is_sweep_override():
                fixed |= {o.key_or_group, o.get_key_element()}
    except Exception:  # noqa: BLE001 - a malformed override: Hydra says so when it parses them
        pass
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(fixed))}]"

USAGE = """usage: splitvit <command> [key=value ...]

commands:
  train    run one split-learning experiment; Hydra overrides, e.g.
           splitvit train method=none dataset=cifar100 dataset.root=/data train.epochs=5
           splitvit train --help    lists the config groups and every key
           splitvit train --multirun method.compression=0.05,0.1,0.2 seed=0,1
  serve    serve the server half to clients on other processes or machines (gRPC)
           splitvit serve listen=0.0.0.0:50051 link.tls.cert=server.pem link.tls.key=server.key [overrides]
  client   train as the client of a `splitvit serve` elsewhere; same overrides as the server's
           splitvit client server=gpu-host:50051 link.tls.ca=ca.pem [overrides]
           (the token comes from $SPLITVIT_TOKEN or link.token_file; --insecure allows no TLS and no token)
           several clients: splitvit serve clients.num=3 clients.scheme=splitfed_v2 ..., then
           splitvit client clients.num=3 clients.scheme=splitfed_v2 clients.id=<0, 1, 2> server=... on each
  plan     list the jobs of a sweep without running them; splitvit plan --all lists the paper's experiments
           splitvit plan +experiment=paper/main_adc
  report   compare runs: a table (Markdown, CSV) and plots of accuracy against compression
           splitvit report multirun/2026-01-01/12-00-00 [out=DIR] [energy.device=jetson_nano_10w]
  eval     a trained model's test accuracy, without training: a run directory or a .safetensors file
           splitvit eval RUN_DIR [dataset.root=/data] [eval.max_batches=4] [out=result.json]
  export   join a run's client and server halves into one timm-layout .safetensors (model.checkpoint= loads it)
           splitvit export RUN_DIR [out=model.safetensors] [server=federation/round-000001234.pt]
  show     what ADC does to a batch (the paper's figure 8): clusters with their kept patches, CLS attention by layer
           splitvit show RUN_DIR [out=DIR] [clusters=4]
"""


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def format_summary(s: dict, run_dir: Path) -> str:
    """The end-of-run lines the console shows: accuracy, bytes each way, compression, and a line for
    each of the channel, the profile, ALaST and the inspection where the run had them."""
    base = s["baseline_bytes_up"] + s["baseline_bytes_down"]
    if s["split_index"] is None:  # trained in one piece: nothing was sent
        return "\n".join([
            f"splitvit: {s['model']} trained in one piece on {s['dataset']} ({s['num_classes']} classes), "
            f"{s['steps']} steps, {s['epochs']} epochs, stopped by {s['stopped_by']}",
            f"  test accuracy, val_acc: final {s['final_val_acc']:.4f}, best {s['best_val_acc']:.4f}",
            f"  wall {s['wall_s']:.1f} s; results in {run_dir}/ (metrics.jsonl, summary.json, checkpoints/)",
        ])
    several = s.get("clients", 1) > 1
    who = "" if not several else f", {s['clients']} clients ({s['scheme']}, {s['partition']}), {s['rounds']} rounds"
    if s["final_val_acc"] is None:  # one client of several over gRPC: the round's evaluator is another
        accuracy = "measured by another client (each round's evaluator; see its run directory)"
    else:
        accuracy = f"final {s['final_val_acc']:.4f}, best {s['best_val_acc']:.4f}"
    lines = [
        f"splitvit: {s['method']} on {s['dataset']} ({s['model']}, split after block {s['split_index']}){who}, "
        f"{s['steps']} steps, {s['epochs']} epochs, stopped by {s['stopped_by']}",
        f"  test accuracy, val_acc ({s['eval_mode']}): {accuracy}",
        f"  sent:  up {_mb(s['bytes_up'])}, down {_mb(s['bytes_down'])}, total {_mb(s['bytes_up'] + s['bytes_down'])}",
        f"  uncompressed split learning would have sent {_mb(base)} for the same steps",
        *([f"  weights and control messages (client halves handed on or averaged): up {_mb(s['weights_bytes_up'])}, "
           f"down {_mb(s['weights_bytes_down'])}; in all {_mb(s['total_bytes'])}"] if several else []),
        f"  compression: measured {s['compression_measured']:.4f} (bytes on the wire), " + (
            f"nominal {s['compression_nominal']:.4f}, target {s['compression_target']:.4f}" if not s.get("compression_schedule")
            else "target {start:g} to {end:g} ({name} schedule; {last:g} at the end)".format(
                **s["compression_schedule"], last=s["compression_target"])),
        f"  wall {s['wall_s']:.1f} s; results in {run_dir}/ (metrics.jsonl, summary.json)",
    ]
    if s.get("link_s"):
        lines.insert(-1, f"  modelled link: {s['link_s']:.1f} s on the link, {s['time_s']:.1f} s in all; "
                         f"best accuracy reached at {s['time_to_best_s']:.1f} s")
    lines[-1:-1] = _feature_lines(s, run_dir)
    lines[-1:-1] = [f"  warning: {w}" for w in s.get("warnings", [])]
    return "\n".join(lines)


def _feature_lines(s: dict, run_dir: Path) -> list[str]:
    """A line for each of the run's instruments that applies: the channel, the profile, ALaST, inspection
    (the last two as the last evaluation saw them)."""
    import json

    out = []
    if s.get("channel") not in (None, "ideal"):
        parts = [f"SNR {d} {s[f'channel_snr_db_{d}']:.1f} dB" for d in ("up", "down") if s.get(f"channel_snr_db_{d}") is not None]
        parts += [f"{s[k]:,} {words}" for k, words in (
            ("channel_bit_errors", "bit errors"), ("channel_packets", "packets"), ("channel_packets_lost", "lost"),
            ("channel_bytes_retransmitted", "bytes resent"), ("channel_erased", "values erased"),
            ("channel_dropped", "dropped"), ("channel_clamped", "clamped")) if s.get(k)]
        out.append(f"  channel {s['channel']} (measured): {', '.join(parts) or 'nothing happened to the messages'}")
    for side, prof in (s.get("profile") or {}).items():
        if isinstance(prof, dict) and prof.get("steps"):
            ms = prof["ms"]
            top = sorted(((v, k) for k, v in ms.items() if k != "total" and "/" not in k), reverse=True)[:3]
            out.append(f"  profile, {side}: {ms['total'] / prof['steps']:.1f} ms a step ("
                       + ", ".join(f"{k} {v / prof['steps']:.1f}" for v, k in top) + f"), peak {prof.get('peak_mb', 0):.0f} MB")
    metrics = run_dir / "metrics.jsonl"
    last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.is_file() and metrics.stat().st_size else {}
    for side, a in (last.get("alast") or {}).items():
        out.append(f"  ALaST, {side}: budgets {', '.join(f'{b:.2f}' for b in a['budgets'])}; tokens per block "
                   f"{', '.join(map(str, a['tokens']))}")
    i = last.get("inspect")
    if i:
        for side, x in (i.items() if all(isinstance(v, dict) for v in i.values()) else [("client", i)]):
            out.append(f"  inspection, {side}: " + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in x.items()
                                                            if isinstance(v, (int, float))))
    return out


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _serve(cfg: DictConfig) -> None:
    from .link.grpc import LinkError
    from .train import ConfigError
    from .train.remote import serve

    try:
        serve(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, LinkError) as e:  # a bad config; an address in use
        print(f"splitvit: error: {e}", file=sys.stderr)
        sys.exit(2)


def _resume_hint(run_dir: Path) -> str:
    """How to continue the run, when it has saved a checkpoint to continue from."""
    if not any((run_dir / "checkpoints" / name).is_file() for name in ("clients.pt", "client.pt")):
        return ""
    args = [a for a in sys.argv[1:] if not a.startswith(("train.resume=", "run_dir=", "--multirun", "-m"))]
    return f"\ncontinue it with: splitvit {sys.argv[0].split()[-1]} {' '.join(args + ['train.resume=true', f'run_dir={run_dir}'])}"


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from .data import MissingDataset
    from .link.grpc import LinkError
    from .train import ConfigError, fit
    from .train.common import Interrupted
    from .wire import WireError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = fit(cfg, run_dir)
    except (ConfigError, MissingDataset, LinkError, WireError) as e:
        link = isinstance(e, (LinkError, WireError))  # a malformed reply is the link's fault, not the config's
        message = f"{'link error' if link else 'error'}: {e}{_resume_hint(run_dir) if link else ''}"
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one bad job must not stop the sweep
            (run_dir / "FAILED").write_text(message + "\n")
            FAILED.append((run_dir, str(e)))
            print(f"splitvit: {message}\n  (marked {run_dir / 'FAILED'}; the sweep goes on)", file=sys.stderr)
            return None
        print(f"splitvit: {message}", file=sys.stderr)
        sys.exit(3 if link else 2)
    except Interrupted as e:
        print(f"splitvit: interrupted after step {e.step}; {e.saved}{_resume_hint(run_dir)}", file=sys.stderr)
        sys.exit(130)
    print(format_summary(summary, run_dir), flush=True)
    return summary["final_val_acc"]  # what a Hydra sweeper optimises


def _precheck(args: list[str], command: str = "train") -> str | None:
    """Compose every job's config before Hydra runs anything: an unknown key or group option is refused
    with what to do instead of Hydra's raw message. Values are checked per job, when it runs."""
    overrides = [a for a in args if not a.startswith("-")]
    if len(overrides) != len(args) and any(a not in ("--multirun", "-m") for a in args if a.startswith("-")):
        return None  # --help, --cfg, -sc ...: Hydra's own options, nothing runs
    from .plan import jobs
    from .train import ConfigError

    try:
        found = jobs(overrides, check=False)
        if len(found) == 1 and not any(a in ("--multirun", "-m") for a in args):
            # one run: its values too, before Hydra makes its folder (a sweep checks each job as it runs,
            # so that one bad job does not stop the others)
            from hydra import compose, initialize_config_module

            from .train.config import validate

            with initialize_config_module("splitvit.conf", version_base=None):
                cfg = compose("config", overrides=found[0])
            validate(cfg)
            if command == "client" and not cfg.link.get("server"):  # it would start a server of its own
                raise ConfigError("splitvit client needs server=HOST:PORT, the address of a running `splitvit serve`; "
                                  "to run both halves in this process over gRPC, use splitvit train link=grpc")
            if command != "serve" and cfg.train.resume and not (Path(cfg.run_dir) / "checkpoints").is_dir():
                raise ConfigError(f"train.resume=true but {cfg.run_dir} holds no checkpoints/; pass the run_dir of the "
                                  "run to resume")
    except ConfigError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a malformed override: Hydra's parser says where
        return str(e).strip().splitlines()[0]
    return None


def _shell_completion(argv: list[str]) -> int:
    """``splitvit -sc install=bash`` prints Hydra's completion script for ``splitvit``; the script then
    asks ``splitvit -sc query=bash`` with the line typed so far, from which the subcommand is dropped
    (Hydra completes keys and groups of one config, which is train's, serve's and client's alike)."""
    import os

    line, point = os.environ.get("COMP_LINE"), os.environ.get("COMP_POINT")
    if line is not None:
        words = line.split(" ")
        if len(words) > 1 and words[1] in ("train", "serve", "client"):
            cut = len(words[1]) + 1
            os.environ["COMP_LINE"] = " ".join(words[:1] + words[2:])
            if point is not None and point.isdigit():
                os.environ["COMP_POINT"] = str(max(0, int(point) - cut))
    sys.argv = ["splitvit", *argv]
    _train()
    return 0


def _link_shorthand(arg: str) -> str:
    """``server=``, ``listen=`` and ``--insecure`` are short for their ``link.`` keys."""
    if arg == "--insecure":
        return "link.insecure=true"
    for key in ("server", "listen"):
        if arg.startswith(key + "="):
            return "link." + arg
    return arg


def main(argv: list[str] | None = None) -> int:
    """The ``splitvit`` command: dispatches to ``train``, ``serve``, ``client``, ``report``, ``plan``, ``show``,
    ``eval`` and ``export``; returns the exit status (2: a refused config, 3: a link failure, 130: Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] in ("--version", "-V", "version"):
        from . import __version__

        print(f"splitvit {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("-sc", "--shell-completion"):
        return _shell_completion(argv)
    if command in ("train", "serve", "client") and any(a in ("-h", "--help") for a in rest):
        from .config_keys import help_text

        print(help_text(), end="")  # every group and key with its meaning (Hydra's own: --hydra-help)
        return 0
    if command in ("train", "serve", "client"):
        args = rest if command == "train" else ["link=grpc", *map(_link_shorthand, rest)]
        if command == "client" and not any(a.startswith("run_dir=") for a in args):
            # clients started at the same second on one machine must not share a folder
            args.append("run_dir=outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-client${clients.id}")
        error = _precheck(args, command)
        if error:
            print(f"splitvit: error: {error}", file=sys.stderr)
            return 2
        if any(a in ("--multirun", "-m") for a in args):
            args = [*args, _name_jobs_by_their_sweep(args)]
        sys.argv = [f"splitvit {command}", *args]
        FAILED.clear()
        _serve() if command == "serve" else _train()
        if FAILED:
            print(f"splitvit: {len(FAILED)} job(s) of the sweep failed:", file=sys.stderr)
            for run_dir, message in FAILED:
                print(f"  {run_dir}: {message}", file=sys.stderr)
            return 1
        return 0
    if command == "plan":
        from .plan import main as plan

        return plan(rest)
    if command == "report":
        from .report import main as report

        return report(rest)
    if command == "eval":
        from .evaluate import main as evaluate

        return evaluate(rest)
    if command == "export":
        from .export import main as export

        return export(rest)
    if command == "show":
        from .show import main as show

        return show(rest)
    print(f"splitvit: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
