#!/usr/bin/env python
"""Cost of the one-shot machinery against plain Mask R-CNN with the same backbone.

    python tools/benchmark.py                                # CPU, 512x512, R-18-FPN and R-50-FPN
    python tools/benchmark.py --device cuda --iters 20       # on a GPU
    python tools/benchmark.py --backbones R18 --size 256 --iters 3

For each backbone it times, at the papers' 512x512 input with batch 1 (median of --iters runs
after --warmup runs, random weights, synthetic phantom slices):

* inference: plain Mask R-CNN vs the one-shot model (affinity and LSTM heads), score threshold 0
  so that every model returns its full 100 detections;
* a training iteration (forward, backward, optimizer step) with the **same number of images**:
  plain Mask R-CNN on 2 segmentation slices vs the one-shot model on 1 segmentation + 1
  classification slice (the papers' batch). A row "one-shot 1+1 vs plain 1" shows the total cost
  of adding a classification image for reference.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the same runs (2 FLOPs per
multiply-add, forward and backward) and reported as GFLOP and GFLOP/s next to every timing.

Other tasks (``--task``, one module of ``oneshot_d2.benchmark`` each): ``paper``, the paper
configs against the original code (its reference times: ``docs/benchmark_reference.json``);
``throughput``, batched inference through ``OneShotPredictor``; ``study``: a phantom patient
volume of ``--study-slices`` slices of ``--study-size`` px, written as NIfTI, through
``tools/predict.py``'s pipeline end to end (read, window, model in batches of ``--study-batch``,
lung mask, report and study folder; no overlays), with the model of ``--study-config`` /
``--study-weights`` (default: the ``make demo`` model if trained, else random weights) at its
training resolution, one row per predictor of ``--study-levers`` (torch NCHW, torch
channels-last, the exported TorchScript and ONNX files), then the default at each other of
``--study-input-sizes``:

    python tools/benchmark.py --task study --threads 2

The tool runs from a checkout (it needs the repository's configs and docs): it is not a console
script.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

import oneshot_d2  # noqa: F401  isort: skip
from oneshot_d2.benchmark import TASKS
from oneshot_d2.benchmark.common import Precision
from oneshot_d2.benchmark.models import BACKBONES, print_models_table
from oneshot_d2.benchmark.paper import FAITHFUL, load_reference, print_paper_table
from oneshot_d2.benchmark.study import (
    DEMO_CONFIG,
    DEMO_WEIGHTS,
    LEVERS,
    default_weights,
    print_study_table,
)
from oneshot_d2.benchmark.throughput import print_throughput_table
from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, "docs", "benchmark_reference.json")


def _study(args: argparse.Namespace, device_name: str, precision: Precision) -> None:
    weights = args.study_weights
    if weights is None:
        weights = default_weights(REPO)
    print_study_table(REPO, args.study_config, weights, args.study_slices, args.study_size,
                      args.study_input_sizes, args.study_batch, args.device, device_name,
                      args.study_levers)


def _paper(args: argparse.Namespace, device_name: str, precision: Precision) -> None:
    print_paper_table(REPO, load_reference(REFERENCE), args.size, args.iters, args.warmup,
                      args.device, device_name, precision)


def _throughput(args: argparse.Namespace, device_name: str, precision: Precision) -> None:
    print_throughput_table(REPO, args.throughput_config, args.throughput_batches,
                           args.throughput_slices, args.size, args.device, device_name,
                           precision)


def _models(args: argparse.Namespace, device_name: str, precision: Precision) -> None:
    print_models_table(REPO, args.backbones, args.size, args.iters, args.warmup, args.device,
                       device_name)


# one function per task, in the order they run (whatever the order given to --task)
RUN = {"study": _study, "paper": _paper, "throughput": _throughput, "models": _models}
assert set(RUN) == set(TASKS)


def main(argv=None) -> int:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--amp", action="store_true",
                   help="paper and throughput rows in mixed precision (CUDA float16, CPU "
                        "bfloat16)")
    p.add_argument("--task", "--rows", nargs="+", default=["models"], choices=list(TASKS),
                   help="; ".join(f"{name}: {what}" for name, what in TASKS.items())
                   + " (--rows: the former name of this option)")
    p.add_argument("--study-config", default=DEMO_CONFIG)
    p.add_argument("--study-weights", default=None,
                   help=f"default: {DEMO_WEIGHTS} when it exists, else random weights")
    p.add_argument("--study-slices", type=int, default=300)
    p.add_argument("--study-size", type=int, default=512)
    p.add_argument("--study-input-sizes", type=int, nargs="+", default=[],
                   help="other model input sizes, with the default predictor (0 = the config's, "
                        "its training resolution; default: none)")
    p.add_argument("--study-batch", type=int, default=8)
    p.add_argument("--study-levers", nargs="+", choices=list(LEVERS), default=list(LEVERS),
                   help="predictors of the study rows, each at the config's input size: "
                        + "; ".join(f"{k}: {v[0]}" for k, v in LEVERS.items()))
    p.add_argument("--throughput-config", default=FAITHFUL)
    p.add_argument("--throughput-batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--throughput-slices", type=int, default=32)
    args = p.parse_args(argv)
    for flag, value in (("--size", args.size), ("--iters", args.iters),
                        ("--study-slices", args.study_slices), ("--study-size", args.study_size),
                        ("--study-batch", args.study_batch),
                        ("--throughput-slices", args.throughput_slices),
                        ("--throughput-batches", min(args.throughput_batches))):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be >= 1")
    if args.warmup < 0 or min(args.study_input_sizes, default=0) < 0:
        raise UsageError("--warmup and --study-input-sizes must be >= 0")
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.getLogger("detectron2").setLevel(logging.WARNING)  # no model dumps
    # random-weight predictors: no "classes reported as class_0.." warning per row
    logging.getLogger("oneshot_d2.inference.predictor").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else f"CPU, {torch.get_num_threads()} threads")
    precision = Precision(amp=args.amp)
    for task, run in RUN.items():
        if task in args.task:
            run(args, device_name, precision)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="benchmark"))
