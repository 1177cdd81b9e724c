"""Linear probe of a frozen backbone on slice classification (oneshot_d2.engine.linear_probe).

The floor a fine-tuned classifier must clear: pooled features of a ``CTImageClassifier`` config's
backbone (its ``MODEL.WEIGHTS``, e.g. ``pretrained://efficientnet-lite0``) and a class-balanced
logistic regression fitted on the training split, scored on the validation split:

    python tools/linear_probe.py \\
        --config-file configs/real/image_classifier_efflite0_330iter_mosmed.yaml \\
        --train mosmed_cls_train --val mosmed_cls_val --output output/probe_mosmed

Writes ``<output>/probe.json`` (train / val metrics; for two classes the threshold chosen on the
training split and the validation metrics at it) and logs the validation summary.
"""
import argparse
import logging
import os
import time
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import load_config
from ..engine.defaults import load_model_for_tool
from ..engine.linear_probe import extract_pooled_features, fit_linear_probe
from ..errors import UsageError
from ..utils.file_io import atomic_write_json
from .common import add_debug_argument, run_cli

logger = logging.getLogger("oneshot_d2.linear_probe")


def parse_args(argv=None) -> argparse.Namespace:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--config-file", required=True, help="a CTImageClassifier config")
    p.add_argument("--train", required=True, help="registered classification training set")
    p.add_argument("--val", required=True, help="registered classification validation set")
    p.add_argument("--output", required=True, help="folder of probe.json and the log")
    p.add_argument("--C", dest="c", type=float, default=0.1,
                   help="inverse L2 strength of the logistic regression (default 0.1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.c <= 0:
        raise UsageError(f"--C {args.c}: must be > 0")
    cfg = load_config(args.config_file, [o for o in args.opts if o != "--debug"])
    cfg.freeze()
    if cfg.MODEL.META_ARCHITECTURE != "CTImageClassifier":
        raise UsageError(f"{args.config_file}: MODEL.META_ARCHITECTURE is "
                         f"{cfg.MODEL.META_ARCHITECTURE!r}; the probe takes a CTImageClassifier "
                         "config (its backbone and pooled IN_FEATURES)")
    # the trunk only: the classifier's own head is not used by the probe
    model = load_model_for_tool(cfg, [args.train, args.val], args.output,
                                os.path.join(args.output, "log.txt"), args.threads,
                                complete=False)
    class_names = list(MetadataCatalog.get(args.val).image_classes)
    t0 = time.perf_counter()
    train = extract_pooled_features(cfg, model, DatasetCatalog.get(args.train))
    val = extract_pooled_features(cfg, model, DatasetCatalog.get(args.val))
    t_features = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = fit_linear_probe(train, val, class_names, c=args.c)
    result = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS,
              "in_features": list(cfg.MODEL.IMAGE_CLASSIFIER.IN_FEATURES),
              "input_size": cfg.INPUT.MIN_SIZE_TEST, "train": args.train, "val": args.val,
              "C": args.c, "feature_dim": int(train[0].shape[1]),
              "feature_seconds": t_features, "fit_seconds": time.perf_counter() - t0,
              **metrics}
    atomic_write_json(os.path.join(args.output, "probe.json"), result)
    v = metrics["val"]
    logger.info("linear probe on %s (%d-d features of %s, %d train images): val accuracy %.1f, "
                "balanced accuracy %.1f, macro AUC %.1f%s", args.val, result["feature_dim"],
                cfg.MODEL.WEIGHTS, len(train[1]), v["accuracy"], v["balanced_accuracy"],
                v["macro_auc"],
                f"; at the training split's threshold {v['chosen_threshold']:.3f}: balanced "
                f"accuracy {v['thresholded/balanced_accuracy']:.1f}" if "chosen_threshold" in v
                else "")
    return result



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-linear-probe`` console script (and ``tools/linear_probe.py``):
    :func:`main` with one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="linear_probe")
