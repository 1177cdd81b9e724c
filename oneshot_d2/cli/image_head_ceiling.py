"""Ceiling of the image head on a frozen detector (oneshot_d2.engine.head_ceiling).

Loads a one-shot checkpoint (e.g. the end of the segmentation-only phase), caches the RoI-batch
mask features of a training and a validation classification set, trains a fresh image head on
the training features alone and writes the per-epoch curves (loss / accuracy / ROC-AUC, train and
val) to ``<output>/ceiling.json``:

    python tools/image_head_ceiling.py \\
        --config-file configs/real/oneshot_affinity_R_18_FPN_800iter_real_2cls.yaml \\
        --train ucsd_cls_train --val ucsd_cls_val --flip --epochs 30 \\
        --output output/ceiling MODEL.WEIGHTS output/seg_phase/model_final.pth
"""
import argparse
import logging
import os
import time
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import load_config
from ..engine.defaults import load_model_for_tool
from ..engine.head_ceiling import cache_roi_features, train_head_on_features
from ..errors import UsageError
from ..utils.file_io import atomic_write_json
from .common import add_debug_argument, run_cli

logger = logging.getLogger("oneshot_d2.ceiling")


def parse_args(argv=None) -> argparse.Namespace:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--config-file", required=True)
    p.add_argument("--train", required=True, help="registered classification training set")
    p.add_argument("--val", required=True, help="registered classification validation set")
    p.add_argument("--output", required=True, help="folder of ceiling.json and the log")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--flip", action="store_true", help="also train on left-right flips")
    p.add_argument("--copy-seg-branch", action="store_true",
                   help="copy the segmentation branch into the classification branch first "
                        "(default: use the checkpoint's classification branch as saved)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be >= 1")
    if args.lr <= 0:
        raise UsageError(f"--lr {args.lr}: must be > 0")
    cfg = load_config(args.config_file, [o for o in args.opts if o != "--debug"])
    cfg.freeze()
    # the image head is retrained here: weights without one (a segmentation phase) are fine
    model = load_model_for_tool(cfg, [args.train, args.val], args.output,
                                os.path.join(args.output, "log.txt"), args.threads,
                                complete=False)
    class_names = list(MetadataCatalog.get(args.val).image_classes)
    if args.copy_seg_branch:
        model.roi_heads.copy_seg_to_cls()
    t0 = time.perf_counter()
    train = cache_roi_features(cfg, model, DatasetCatalog.get(args.train), flip=args.flip)
    val = cache_roi_features(cfg, model, DatasetCatalog.get(args.val))
    t_cache = time.perf_counter() - t0
    logger.info("cached %d train views, %d val images of %s in %.0f s", len(train.labels),
                len(val.labels), tuple(train.features.shape[1:]), t_cache)
    t0 = time.perf_counter()
    out_file = os.path.join(args.output, "ceiling.json")

    def summary(history) -> dict:
        return {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS,
                "train": args.train, "val": args.val, "flip": args.flip, "lr": args.lr,
                "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed,
                "cache_seconds": t_cache, "train_seconds": time.perf_counter() - t0,
                "best_val_auc_epoch": max(history, key=lambda r: r["val/auc"]),
                "history": history}

    history = train_head_on_features(  # the curves so far are saved after every epoch
        cfg, train, val, class_names, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, weight_decay=args.weight_decay, seed=args.seed,
        on_epoch=lambda h: atomic_write_json(out_file, summary(h)))
    result = summary(history)
    best = result["best_val_auc_epoch"]
    logger.info("best val AUC %.1f (accuracy %.1f) at epoch %d; last: val AUC %.1f, accuracy "
                "%.1f, train accuracy %.1f", best["val/auc"], best["val/accuracy"],
                best["epoch"], history[-1]["val/auc"], history[-1]["val/accuracy"],
                history[-1]["train/accuracy"])
    return result



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-image-head-ceiling`` console script (and
    ``tools/image_head_ceiling.py``): :func:`main` with one-line errors and exit status 2
    (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="image_head_ceiling")
