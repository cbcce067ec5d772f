"""``splitvit eval SOURCE [key=value ...]``: a trained model's test accuracy, without training.

``SOURCE`` is a run directory (its halves joined as ``splitvit export`` joins them, its config from
its checkpoint) or a ``.safetensors`` model file (``splitvit export``'s, whose metadata gives the model
and the data it was trained on, or any timm-layout file with ``model=`` and ``dataset=`` given).
The model is evaluated in one piece, as the paper evaluates (``eval.mode=uncompressed``). Keys
override the source's config, as for ``splitvit train``: ``dataset.root=/data``, ``eval.batch_size=500``,
``eval.max_batches=4``, ``device=cuda``, and for a file of another origin ``model=`` and
``dataset=`` with ``dataset.classes=``. ``out=FILE.json`` also writes the result there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .argv import KeyValueParser, plain


class EvalError(ValueError):
    """A source that cannot be evaluated; the message says why and what to do."""


def _config(source: Path, overrides: list[str]):
    """The config to evaluate under and the whole model's weights."""
    from omegaconf import OmegaConf

    from .export import ExportError, checkpoint_of, joined_state
    from .train.config import ConfigError, check_keys

    if source.is_dir():
        try:
            weights, saved, _ = joined_state(checkpoint_of(source))
        except ExportError as e:
            raise EvalError(str(e)) from None
        cfg = OmegaConf.create(saved)
    elif source.suffix == ".safetensors" and source.is_file():
        from safetensors import safe_open

        from .models.pretrained import read_state_dict

        with safe_open(str(source), "pt") as f:
            meta = f.metadata() or {}
        weights = read_state_dict(source)
        base = _default_config()
        if "model" in meta:  # written by splitvit export: what the model is and what it learned on
            geometry = json.loads(meta["geometry"])
            base.model.name = meta["model"]
            base.model.update({k: v for k, v in geometry.items() if v is not None})
            base.dataset = _default_config([f"dataset={meta['dataset']}"]).dataset
            base.dataset.classes = json.loads(meta["dataset_classes"])
        base.split.index = None
        cfg = base
    else:
        raise EvalError(f"{source} is neither a run directory nor a .safetensors file")
    extra = OmegaConf.from_dotlist([o for o in overrides if not o.startswith(("model=", "dataset="))])
    groups = [o for o in overrides if o.startswith(("model=", "dataset="))]
    if groups:  # another model or dataset than the source's: their option files first, then the keys
        fresh = _default_config(groups)
        for o in groups:
            group = o.split("=", 1)[0]
            cfg[group] = fresh[group]
    cfg = OmegaConf.merge(cfg, extra)
    try:
        check_keys(cfg)
    except ConfigError as e:
        raise EvalError(str(e)) from None
    return cfg, weights


def _default_config(overrides: list[str] = ()):
    from hydra import compose, initialize_config_module

    with initialize_config_module("splitvit.conf", version_base=None):
        cfg = compose("config", overrides=list(overrides))
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def evaluate(source: Path, overrides: list[str] = ()) -> dict:
    """``source``'s test loss and accuracy, in one piece: ``{val_acc, val_loss, images, ...}``."""
    import torch

    from .data import MissingDataset
    from .models import create_model, load_weights
    from .train.common import load_data, test_batches
    from .train.config import ConfigError, resolve_device
    from .train.evaluation import score

    cfg, weights = _config(Path(source), list(overrides))
    if "head.weight" not in weights:
        raise EvalError(f"{source} holds no head.weight: not a whole model (a run stopped before its first round?)")
    m = cfg.model
    model = create_model(m.name, num_classes=weights["head.weight"].shape[0], img_size=m.img_size,
                         patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads)
    try:
        load_weights(model, weights)
    except ValueError as e:
        raise EvalError(f"{source} is not a whole {m.name} of this geometry: {e}; give model= and its keys") from None
    try:
        data = load_data(cfg)
    except (ConfigError, MissingDataset) as e:
        raise EvalError(str(e)) from None
    if data.num_classes != model.cfg.num_classes:
        raise EvalError(f"the model has {model.cfg.num_classes} classes and {cfg.dataset.name} "
                        f"(classes {cfg.dataset.get('classes')}) {data.num_classes}: give the dataset.classes it learned")
    device = resolve_device(cfg.device)
    model.to(device).eval()
    test = test_batches(cfg, data, model.cfg, device)
    with torch.no_grad():
        loss, acc = score((model(images), labels) for images, labels in test)
    n = len(data.test.labels) if cfg.eval.get("max_batches") is None else min(
        len(data.test.labels), cfg.eval.max_batches * cfg.eval.batch_size)
    return {"source": str(source), "model": m.name, "dataset": cfg.dataset.name, "dataset_classes": cfg.dataset.get("classes"),
            "images": n, "val_acc": acc, "val_loss": loss}


def main(argv: list[str]) -> int:
    """``splitvit eval SOURCE [key=value ...]``: a run's (or a model file's) test accuracy, without training."""
    ap = KeyValueParser(prog="splitvit eval", description=plain(__doc__))
    ap.add_argument("source", type=Path, help="a run directory, or a .safetensors model file")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. dataset.root=/data eval.max_batches=4")
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    try:
        result = evaluate(args.source, args.overrides)
    except EvalError as e:
        print(f"splitvit eval: error: {e}", file=sys.stderr)
        return 2
    classes = "" if result["dataset_classes"] is None else f" classes {result['dataset_classes']}"
    print(f"splitvit eval: {result['model']} on {result['dataset']}{classes}, {result['images']} test images: "
          f"val_acc {result['val_acc']:.4f}, val_loss {result['val_loss']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
