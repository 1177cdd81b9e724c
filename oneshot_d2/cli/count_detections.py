"""Count a lesion detector's detections on a slice set, by a field of its dataset dicts.

Does a detector trained on one set's lesions find lesions on another's slices at all? On MosMed
(``severity`` CT-0 .. CT-4 by lung involvement) normal studies should have the fewest
detections per slice and the most involved grades the most:

    python tools/count_detections.py \\
        --config-file configs/real/oneshot_affinity_efflite0_FPN_1000iter_mosmed.yaml \\
        --dataset mosmed_cls_val --group-by severity --output output/detections \\
        MODEL.WEIGHTS output/.../model_final.pth

Writes ``<output>/detections.json`` and logs a table (oneshot_d2.evaluation.detection_counts).
"""
import argparse
import logging
import os
from typing import List, Optional

from detectron2.evaluation import inference_on_dataset

from ..config import load_config
from ..engine import OneShotTrainer
from ..engine.defaults import load_model_for_tool
from ..errors import UsageError
from ..evaluation.detection_counts import DetectionCountEvaluator
from ..utils.file_io import atomic_write_json
from .common import add_debug_argument, run_cli

logger = logging.getLogger("oneshot_d2.count_detections")


def main(argv=None) -> dict:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--config-file", required=True, help="a one-shot or Mask R-CNN config")
    p.add_argument("--dataset", required=True, help="registered dataset to run on")
    p.add_argument("--group-by", default="severity", help="dataset-dict field (default severity)")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="count detections scoring at least this (default 0.5)")
    p.add_argument("--output", required=True, help="folder of detections.json and the log")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    if not 0.0 <= args.score_thresh <= 1.0:
        raise UsageError(f"--score-thresh {args.score_thresh}: must be in [0, 1]")
    cfg = load_config(args.config_file, [o for o in args.opts if o != "--debug"])
    cfg.freeze()
    if not cfg.MODEL.MASK_ON:
        raise UsageError(f"{args.config_file}: a lesion detector (MODEL.MASK_ON) is needed")
    model = load_model_for_tool(cfg, [args.dataset], args.output,
                                os.path.join(args.output, "log.txt"), args.threads,
                                check_classes=False)
    model.eval()
    evaluator = DetectionCountEvaluator(args.group_by, args.score_thresh, distributed=False)
    loader = OneShotTrainer.build_test_loader(cfg, args.dataset)
    results = inference_on_dataset(model, loader, evaluator)
    result = {"config_file": args.config_file, "weights": cfg.MODEL.WEIGHTS,
              "dataset": args.dataset, "group_by": args.group_by,
              "score_thresh": args.score_thresh, **results}
    atomic_write_json(os.path.join(args.output, "detections.json"), result)
    return result



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-count-detections`` console script (and ``tools/count_detections.py``):
    :func:`main` with one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="count_detections")
