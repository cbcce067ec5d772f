"""The ``splitvit`` command. ``splitvit train [key=value ...]`` runs one experiment (Hydra overrides)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

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
  plan     list the jobs of a sweep without running them; splitvit plan --all lists the paper's experiments
           splitvit plan +experiment=paper/main_adc
  report   compare runs: a table (Markdown, CSV) and plots of accuracy against compression
           splitvit report multirun/2026-01-01/12-00-00 [--out DIR]
  export   join a run's client and server halves into one timm-layout .safetensors (model.checkpoint= loads it)
           splitvit export RUN_DIR [--out model.safetensors] [--server server-000001234.pt]
"""


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def format_summary(s: dict, run_dir: Path) -> str:
    base = s["baseline_bytes_up"] + s["baseline_bytes_down"]
    if s["split_index"] is None:  # trained in one piece: nothing was sent
        return "\n".join([
            f"splitvit: {s['model']} trained in one piece on {s['dataset']} ({s['num_classes']} classes), "
            f"{s['steps']} steps, {s['epochs']} epochs, stopped by {s['stopped_by']}",
            f"  val accuracy: final {s['final_val_acc']:.4f}, best {s['best_val_acc']:.4f}",
            f"  wall {s['wall_s']:.1f} s; results in {run_dir}/ (metrics.jsonl, summary.json, checkpoints/)",
        ])
    lines = [
        f"splitvit: {s['method']} on {s['dataset']} ({s['model']}, split after block {s['split_index']}), "
        f"{s['steps']} steps, {s['epochs']} epochs, stopped by {s['stopped_by']}",
        f"  val accuracy ({s['eval_mode']}): final {s['final_val_acc']:.4f}, best {s['best_val_acc']:.4f}",
        f"  sent:  up {_mb(s['bytes_up'])}, down {_mb(s['bytes_down'])}, total {_mb(s['bytes_up'] + s['bytes_down'])}",
        f"  uncompressed split learning would have sent {_mb(base)} for the same steps",
        f"  compression: measured {s['compression_measured']:.4f} (bytes on the wire), nominal {s['compression_nominal']:.4f}, "
        f"target {s['compression_target']:.4f}",
        f"  wall {s['wall_s']:.1f} s; results in {run_dir}/ (metrics.jsonl, summary.json)",
    ]
    return "\n".join(lines)


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


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from .data import MissingDataset
    from .link.grpc import LinkError
    from .train import ConfigError, fit

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = fit(cfg, run_dir)
    except (ConfigError, MissingDataset) as e:
        print(f"splitvit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except LinkError as e:
        print(f"splitvit: link error: {e}\n(the run can continue from its last checkpoint with train.resume=true)", file=sys.stderr)
        sys.exit(3)
    print(format_summary(summary, run_dir), flush=True)
    return summary["final_val_acc"]  # what a Hydra sweeper optimises


def _link_shorthand(arg: str) -> str:
    """``server=``, ``listen=`` and ``--insecure`` are short for their ``link.`` keys."""
    if arg == "--insecure":
        return "link.insecure=true"
    for key in ("server", "listen"):
        if arg.startswith(key + "="):
            return "link." + arg
    return arg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        sys.argv = ["splitvit train", *rest]
        _train()
        return 0
    if command in ("serve", "client"):
        sys.argv = [f"splitvit {command}", "link=grpc", *map(_link_shorthand, rest)]
        _serve() if command == "serve" else _train()
        return 0
    if command == "plan":
        from .plan import main as plan

        return plan(rest)
    if command == "report":
        from .report import main as report

        return report(rest)
    if command == "export":
        from .export import main as export

        return export(rest)
    print(f"splitvit: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
