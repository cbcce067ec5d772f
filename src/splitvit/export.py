"""``splitvit export RUN_DIR [--out PATH]``: one timm-layout ``.safetensors`` from a run's checkpoints.

A split run keeps each half on its own side: ``checkpoints/client.pt`` (patch embedding and blocks
``1..l``) and the server's ``server-<steps>.pt`` (blocks ``l+1..L``, norm and head). Exporting joins
the two halves as of the client's last checkpoint into the state dict of the whole ViT, with timm's
names, so ``model.checkpoint=`` (or timm itself) loads it. A run trained over gRPC keeps its server
half on the server's disk: copy that file over and pass it with ``--server``.

The file's metadata records where the weights came from (all values are strings, as safetensors
requires): the model preset and geometry, the classes, the dataset and its class subset, the steps,
the final accuracy and the source run's config hash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from . import __version__


class ExportError(ValueError):
    """Checkpoints that cannot be joined; the message names the file and what to do."""


def _load(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ExportError(f"{what} checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a pickle that is not weights: the file is unusable either way
        raise ExportError(f"{path} is not a readable {what} checkpoint ({type(e).__name__}: {e}); "
                          "it may be truncated: use the run's previous checkpoint or train again") from None
    if not isinstance(state, dict):
        raise ExportError(f"{path} is not a splitvit {what} checkpoint")
    return state


def _server_file(server: Path | None, run_dir: Path | None, steps: int) -> Path:
    """The server checkpoint after ``steps`` steps: ``server`` itself, or the matching file in its folder."""
    folder = server if server is not None and server.is_dir() else None
    if server is not None and folder is None:
        return server
    folder = folder or run_dir / "checkpoints"
    path = folder / f"server-{steps:09d}.pt"
    if not path.is_file():
        have = sorted(p.name for p in folder.glob("server-*.pt")) if folder.is_dir() else []
        raise ExportError(
            f"no server checkpoint after {steps} steps in {folder} (found: {', '.join(have) or 'none'}). "
            "A run over gRPC keeps its server half on the server: copy server-<steps>.pt from the server's "
            "run directory and pass it with --server"
        )
    return path


def joined_state(client_path: Path, server_path: Path | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """The whole model's state dict, the run's config and its progress, from the run's checkpoints."""
    client = _load(client_path, "client")
    try:
        config, progress, weights = client["config"], client["progress"], dict(client["client"])
    except KeyError as e:
        raise ExportError(f"{client_path} lacks {e}: it is not a splitvit client checkpoint") from None
    if config["split"]["index"] is not None:
        run_dir = client_path.parent.parent
        path = _server_file(server_path, run_dir, progress["step"])
        server = _load(path, "server")
        if "model" not in server or "last_step" not in server:
            raise ExportError(f"{path} is not a splitvit server checkpoint")
        if server["last_step"] + 1 != progress["step"]:
            raise ExportError(
                f"{path} holds the server half after {server['last_step'] + 1} steps, but {client_path} is after "
                f"{progress['step']} steps: pass the server checkpoint of the same step (server-{progress['step']:09d}.pt)"
            )
        overlap = sorted(set(weights) & set(server["model"]))
        if overlap:
            raise ExportError(f"{client_path} and {path} both hold {overlap[:3]}: they are not two halves of one model")
        weights.update(server["model"])
    return fold_lora(weights, config), config, progress


LORA_TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def fold_lora(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """LoRA adapters (``finetune.lora=true``) folded into the weights they adapt, ``W + (alpha / r) B A``,
    so that the whole model has timm's keys only and loads without the adapters."""
    keys = [k for k in weights if ".lora." in k and k.endswith(".A")]
    if not keys:
        return weights
    f = config.get("finetune") or {}
    weights = dict(weights)
    for key in keys:
        block, name = key.split(".lora.")[0], key.split(".lora.")[1][: -len(".A")]
        A, B = weights.pop(key), weights.pop(key[:-1] + "B")
        scale = (f.get("lora_alpha") or A.shape[0]) / A.shape[0]
        target = f"{block}.{LORA_TARGETS[name]}.weight"
        weights[target] = weights[target] + scale * (B.float() @ A.float()).to(weights[target].dtype)
    return weights


def provenance(config: dict, progress: dict, num_classes: int) -> dict[str, str]:
    from .models import PRESETS
    from .train.loop import config_hash

    m = config["model"]
    preset = PRESETS.get(m["name"])
    geometry = {k: m.get(k) if m.get(k) is not None else getattr(preset, k, None)
                for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")}
    history = progress.get("history") or [{}]
    d = config["dataset"]
    return {
        "format": "pt",  # as timm's files: torch tensors
        "splitvit_version": __version__,
        "model": m["name"],
        "geometry": json.dumps(geometry),
        "num_classes": str(num_classes),
        "dataset": d["name"],
        "dataset_classes": json.dumps(d.get("classes")),
        "steps": str(progress["step"]),
        "epochs": str(history[-1].get("epoch")),
        "final_val_acc": str(history[-1].get("val_acc")),
        "split_index": json.dumps(config["split"]["index"]),
        "method": config["method"]["name"],
        "seed": str(config["seed"]),
        "config_hash": config_hash(config),
    }


def export(client_path: Path, out: Path, server_path: Path | None = None) -> dict[str, str]:
    """Join a run's halves into ``out`` (``.safetensors``); returns the metadata written."""
    from safetensors.torch import save_file

    from .models import create_model, load_weights

    weights, config, progress = joined_state(client_path, server_path)
    if "head.weight" not in weights:
        raise ExportError(f"the checkpoints hold no head.weight: {client_path} is not from a complete run")
    num_classes = weights["head.weight"].shape[0]
    m = config["model"]
    model = create_model(m["name"], num_classes=num_classes, img_size=m.get("img_size"), patch_size=m.get("patch_size"),
                         embed_dim=m.get("embed_dim"), depth=m.get("depth"), num_heads=m.get("num_heads"))
    try:
        load_weights(model, weights)  # every key present and of the right shape: the file is a whole model
    except ValueError as e:
        raise ExportError(f"the joined halves do not make a whole {m['name']}: {e}") from None
    meta = provenance(config, progress, num_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # an ordinary file, readable as the user's files are
    os.replace(tmp, out)
    return meta


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="splitvit export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", type=Path, help="the run directory (its checkpoints/client.pt is read)")
    ap.add_argument("--client", type=Path, help="the client checkpoint, instead of RUN_DIR")
    ap.add_argument("--server", type=Path, help="the server checkpoint (server-<steps>.pt) or its folder; "
                    "default: RUN_DIR/checkpoints, where an in-process run keeps it")
    ap.add_argument("--out", type=Path, help="the .safetensors to write (default: RUN_DIR/model.safetensors)")
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.client is None):
        print("splitvit export: error: give a RUN_DIR or --client PATH (one of them)", file=sys.stderr)
        return 2
    client = args.client or args.run_dir / "checkpoints" / "client.pt"
    out = args.out or (args.run_dir or client.parent) / "model.safetensors"
    if out.suffix != ".safetensors":
        print(f"splitvit export: error: --out {out} must end in .safetensors", file=sys.stderr)
        return 2
    try:
        meta = export(client, out, args.server)
    except ExportError as e:
        print(f"splitvit export: error: {e}", file=sys.stderr)
        return 2
    import hashlib

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out}: {meta['model']} {meta['geometry']}, {meta['num_classes']} classes, {meta['dataset']} "
          f"classes {meta['dataset_classes']}, {meta['steps']} steps, final val_acc {meta['final_val_acc']}\n"
          f"sha256 {digest}")
    return 0
