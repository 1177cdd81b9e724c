"""Fit a trained slice classifier's temperature on a validation split; save it with the weights.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T before the softmax:
the predicted classes and the AUC stay, the probabilities become calibrated. Training does it
itself with ``TEST.CLASSIFICATION.CALIBRATION_DATASET``; this tool does it for a checkpoint:

    python tools/calibrate.py --config-file CONFIG --dataset mosmed_cls_val \\
        --output output/model_calibrated.pth MODEL.WEIGHTS output/.../model_final.pth

Writes the checkpoint with the fitted ``image_cls_temperature`` (a new file, never the input)
and ``<output>.calibration.json`` (T; NLL, expected calibration error, Brier before / after).
"""
import argparse
import json
import logging
import os
from typing import List, Optional

import torch

from ..config import load_config
from ..engine.calibration import calibrate_model
from ..engine.defaults import load_model_for_tool
from ..errors import UsageError
from ..utils.file_io import atomic_open, atomic_write_bytes
from .common import add_debug_argument, run_cli

logger = logging.getLogger("oneshot_d2.calibrate")


def main(argv=None) -> dict:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset", required=True, help="registered classification validation set")
    p.add_argument("--output", required=True, help="the calibrated checkpoint (.pth) to write")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    cfg = load_config(args.config_file, [o for o in args.opts if o != "--debug"])
    cfg.freeze()
    out = os.path.abspath(args.output)
    if not out.endswith(".pth"):
        raise UsageError(f"--output {args.output}: give a .pth file name")
    if cfg.MODEL.WEIGHTS and os.path.abspath(cfg.MODEL.WEIGHTS) == out:
        raise UsageError(f"--output {args.output}: the input weights; write a new file")
    model = load_model_for_tool(cfg, [args.dataset], os.path.dirname(out) or ".",
                                threads=args.threads)
    summary = calibrate_model(cfg, model, args.dataset, distributed=False)
    summary.update(config_file=args.config_file, weights=cfg.MODEL.WEIGHTS, output=out)
    with atomic_open(out, "wb") as f:  # the weights only, next to nothing else
        torch.save({"model": model.state_dict()}, f)
    atomic_write_bytes(out + ".calibration.json", json.dumps(summary, indent=2).encode())
    return summary



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-calibrate`` console script (and ``tools/calibrate.py``): :func:`main`
    with one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="calibrate")
