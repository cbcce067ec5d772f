"""``splitvit export RUN_DIR [--out PATH]``: one timm-layout ``.safetensors`` from a run's checkpoints.

A split run keeps its clients' halves (patch embedding and blocks ``1..l``) in
``checkpoints/clients.pt``, and the server's (blocks ``l+1..L``, norm and head) with the state of its
rounds: in the same file when the run was simulated in one process, in the server's
``federation/round-<steps>.pt`` when it ran over gRPC (copy that file over and pass it with
``--server``). Exporting joins the half of the client that evaluated last and the server's half, as of
the last round both saved, into the state dict of the whole ViT, with timm's names, so
``model.checkpoint=`` (or timm itself) loads it. A model trained in one piece is in ``client.pt``.

The file's metadata records where the weights came from (all values are strings, as safetensors
requires): the model preset and geometry, the classes, the dataset and its class subset, the steps,
the final accuracy and the source run's config hash.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .argv import KeyValueParser, plain
from . import __version__


class ExportError(ValueError):
    """Checkpoints that cannot be joined; the message names the file and what to do."""


def _load(path: Path, what: str) -> dict:
    from .train.checkpoint import load_checkpoint_file
    from .train.config import ConfigError

    if not path.is_file():
        raise ExportError(f"{what} checkpoint {path} does not exist")
    try:
        return load_checkpoint_file(path)  # checked against its checksum, where it has one
    except ConfigError as e:
        raise ExportError(f"{what} {e}") from None


def checkpoint_of(run_dir: Path) -> Path:
    """The checkpoint a run directory holds: its clients' (a split run) or its model's (one piece)."""
    split = run_dir / "checkpoints" / "clients.pt"
    return split if split.is_file() else run_dir / "checkpoints" / "client.pt"


def _server_state(clients: dict, path: Path, server_path: Path | None) -> dict:
    """The server's side of a split run as of the clients' last round: from the clients' own file (a
    simulation), or from ``server_path`` (a run over gRPC: the server's ``round-<steps>.pt``, or its folder)."""
    steps = clients["progress"].get("global_steps", clients["progress"]["step"])
    if server_path is None:
        if "hub" not in clients:
            raise ExportError(f"{path} holds no server half: the run trained over gRPC, and the server keeps its half "
                              "in its run directory's federation/round-<steps>.pt; copy it over and pass it with --server")
        return clients["hub"]
    if server_path.is_dir():
        server_path = server_path / f"round-{steps:09d}.pt"
    server = _load(server_path, "server")
    if "halves" not in server or "ledger" not in server:
        raise ExportError(f"{server_path} is not a splitvit server checkpoint (federation/round-<steps>.pt)")
    if server["ledger"]["step"] != steps:
        raise ExportError(f"{server_path} holds the server half after {server['ledger']['step']} steps, but {path} "
                          f"is after {steps}: pass the server's round-{steps:09d}.pt")
    return server


def joined_state(client_path: Path, server_path: Path | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """The whole model's state dict, the run's config and its progress, from the run's checkpoints."""
    state = _load(client_path, "client")
    try:
        config, progress = state["config"], state["progress"]
        if config["split"]["index"] is None:  # one piece
            return fold_lora(dict(state["client"]), config), config, progress
        history = progress.get("history") or []
        members = state["members"]
    except KeyError as e:
        raise ExportError(f"{client_path} lacks {e}: it is not a splitvit checkpoint") from None
    # the half of the client that evaluated last (SplitFed: every client holds the average)
    who = history[-1].get("client", 0) if history else 0
    member = members.get(who, members.get(str(who))) or members[min(members)]
    server = _server_state(state, client_path, server_path)
    half = server["halves"][int(who) % len(server["halves"])]
    weights = dict(member["model"])
    overlap = sorted(set(weights) & set(half["model"]))
    if overlap:
        raise ExportError(f"{client_path} and its server half both hold {overlap[:3]}: they are not two halves of one model")
    weights.update(half["model"])
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
    """What an exported model file says about where it came from: the run, its config and its result."""
    from .models import PRESETS
    from .train.common import config_hash

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
    """``splitvit export RUN_DIR [out=FILE]``: a run's two halves joined into one timm-layout ``.safetensors``."""
    ap = KeyValueParser(prog="splitvit export", description=plain(__doc__))
    ap.add_argument("run_dir", nargs="?", type=Path, help="the run directory (its checkpoints/clients.pt is read)")
    ap.add_argument("--client", type=Path, help="the clients' checkpoint, instead of RUN_DIR")
    ap.add_argument("--server", type=Path, help="a run over gRPC: the server's round-<steps>.pt, or its federation "
                    "folder (an in-process run keeps the server's half with the clients')")
    ap.add_argument("--out", type=Path, help="the .safetensors to write (default: RUN_DIR/model.safetensors)")
    args = ap.parse_args(argv)
    if (args.run_dir is None) == (args.client is None):
        print("splitvit export: error: give a RUN_DIR or --client PATH (one of them)", file=sys.stderr)
        return 2
    client = args.client or checkpoint_of(args.run_dir)
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
