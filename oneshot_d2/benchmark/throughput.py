"""The ``throughput`` task: batched inference through :class:`OneShotPredictor` (the predict
pipeline's model part) on phantom slices, random weights and the predictor's lesion score
threshold: slices per second (and per core-second), GFLOP per slice, the share of the measured
matmul peak and the time per slice of each stage, for each batch size, with all outputs and with
the slice class only."""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any, ContextManager, List, Sequence

import numpy as np
import torch
from tabulate import tabulate

from oneshot_d2.config import load_config
from oneshot_d2.data.phantom import COVID, CP, render_slice, sample_anatomy
from oneshot_d2.data.transforms import lung_window
from oneshot_d2.engine.profiling import StageTimer, matmul_peak_gflops, stage_flops, synchronize
from oneshot_d2.inference import OneShotPredictor
from oneshot_d2.modeling import image_cls_only

from .common import Precision, settings_line

__all__ = ["OUTPUTS", "phantom_slices", "bench_throughput", "print_throughput_table"]

# the output sets timed for each batch size
OUTPUTS = ("lesions + slice class", "slice class only")


def phantom_slices(n: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """n lung-window uint8 phantom slices (COVID-like and pneumonia-like alternating)."""
    rng = np.random.default_rng(seed)
    return [lung_window(render_slice(rng, size, COVID if i % 2 == 0 else CP,
                                     sample_anatomy(rng), 0.6).hu) for i in range(n)]


def bench_throughput(repo: str, config: str, batches: Sequence[int], slices: int, size: int,
                     device: str, threads: int, peak: float,
                     precision: Precision) -> List[list]:
    """Batched inference of ``slices`` phantom slices of ``size`` px through
    :class:`OneShotPredictor` with ``config`` (relative to ``repo``): one row per batch size and
    output set. ``threads`` divides the throughput per core, ``peak`` (GFLOP/s) gives the share
    of the peak."""
    images = phantom_slices(slices, size)
    rows = []
    for batch in batches:
        for outputs in OUTPUTS:
            cfg = load_config(os.path.join(repo, config), [
                "MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
                "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)])
            torch.manual_seed(0)
            predictor = OneShotPredictor(cfg, batch_size=batch, allow_random_weights=True)
            model = predictor.model

            def outputs_ctx(model=model, outputs=outputs) -> ContextManager[Any]:
                return image_cls_only(model) if outputs == "slice class only" else \
                    contextlib.nullcontext()

            with outputs_ctx(), precision.counting_flops():
                flops = stage_flops(model, functools.partial(predictor, images[:batch]))
            with outputs_ctx(), precision.autocast(device):
                predictor(images[:batch])  # warm-up
                synchronize(device)
                t = time.perf_counter()
                preds = predictor(images)
                synchronize(device)
                seconds = time.perf_counter() - t
                with StageTimer(model, device=device) as timer:
                    predictor(images)
            gf_slice = flops["total"] / batch
            n_det = np.mean([len(p["instances"]) if "instances" in p else 0 for p in preds])
            stage_ms = ", ".join(f"{k} {1000 * v / slices:.0f}"
                                 for k, v in timer.seconds.items() if v > 0)
            rows.append([os.path.basename(config), outputs, batch, round(n_det, 1),
                         f"{slices / seconds:.2f}", f"{slices / seconds / threads:.2f}",
                         f"{1000 * seconds / slices:.0f}", f"{gf_slice:.1f}",
                         f"{gf_slice * slices / seconds:.0f}",
                         f"{100 * gf_slice * slices / seconds / peak:.0f} %", stage_ms])
            del predictor, model
    return rows


def print_throughput_table(repo: str, config: str, batches: Sequence[int], slices: int,
                           size: int, device: str, device_name: str,
                           precision: Precision) -> None:
    """Measure the matmul peak, run :func:`bench_throughput` with torch's thread count and
    print its table."""
    peak = matmul_peak_gflops(device)
    rows = bench_throughput(repo, config, batches, slices, size, device,
                            torch.get_num_threads(), peak, precision)
    print(f"\nBatched inference through OneShotPredictor, {slices} slices "
          f"of {size} px, random weights, {settings_line(precision.amp, device_name, peak)}\n")
    print(tabulate(rows, headers=[
        "config", "outputs", "batch", "lesions / slice", "slices/s", "slices per core-s",
        "ms / slice", "GFLOP / slice", "GFLOP/s", "of peak", "ms / slice by stage"],
        tablefmt="pipe"))
