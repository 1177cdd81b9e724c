"""The ``paper`` task: the paper configs' table at the papers' input (batch 1, random weights,
the initial weight copy): inference, the classification path alone and a training iteration
(1 segmentation + 1 classification slice), each with its GFLOP and its ratio to the original
code's time, and the inference time and GFLOP of each stage.

The original code's times come from a reference file (``docs/benchmark_reference.json``, read by
:func:`load_reference`); see its ``note``.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from oneshot_d2.engine.profiling import (
    ONESHOT_STAGES,
    StageTimer,
    matmul_peak_gflops,
    stage_flops,
)
from oneshot_d2.modeling import image_cls_only

from .common import (
    Precision,
    build_model,
    cls_input,
    make_inputs,
    measure,
    seg_input,
    settings_line,
)

__all__ = ["FAITHFUL", "LSTM_PAPER", "X50_32X4D", "FORMER_D2_NETWORK", "FINE_MAP_FG05",
           "PAPER_ROWS", "REFERENCE_KEYS", "load_reference", "vs_original", "bench_paper",
           "print_paper_table"]

logger = logging.getLogger("benchmark")

FAITHFUL = "configs/covid/oneshot_affinity_R_18_faithful_100ep_cncb.yaml"
LSTM_PAPER = "configs/covid/oneshot_lstm_attn_R_50_FPN_50ep_cncb.yaml"
# The released LSTM code's trunk; we measured the R-50 config as this.
X50_32X4D = ["MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "4"]
# The network the LSTM paper configs ran before: Base-OneShot-RCNN-FPN.yaml's values
# (Detectron2's defaults with lesion-sized anchors), for the "former" row.
FORMER_D2_NETWORK = [
    "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.5, 1.0, 2.0]]",
    "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "2000", "MODEL.RPN.PRE_NMS_TOPK_TEST", "1000",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "1000", "MODEL.RPN.POST_NMS_TOPK_TEST", "1000",
    "MODEL.RPN.NMS_THRESH", "0.7", "MODEL.RPN.POSITIVE_FRACTION", "0.5",
    "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]", "MODEL.ROI_HEADS.IOU_LABELS", "[0, 1]",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "512", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.25",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "1024", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "0", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "0.0",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "4", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignV2",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "0"]
# The accuracy option (README, Results): the one-level network one stage earlier
# (the X-50 trunk cut after res4: a stride-16 map at 512 px) with Detectron2's RoI foreground
# IoU 0.5 instead of the original's 0.75.
FINE_MAP_FG05 = [
    "MODEL.RESNETS.OUT_FEATURES", "['res4']", "MODEL.FPN.IN_FEATURES", "['res4']",
    "MODEL.RPN.IN_FEATURES", "['p4']", "MODEL.ROI_HEADS.IN_FEATURES", "['p4']",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]", "MODEL.ROI_HEADS.IOU_LABELS", "[0, 1]"]
PAPER_ROWS: Dict[str, Tuple[str, List[str]]] = {
    # row: (config, options). The affinity pair runs with 100 detections (score threshold 0) as
    # in the issue; the LSTM rows with the papers' 0.75, which random weights never reach (the
    # issue's LSTM rows had no detections either: 0.6 GFLOP of RoI heads in the original).
    "affinity: oneshot_affinity_R_18_faithful": (
        FAITHFUL, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]),
    "LSTM: oneshot_lstm_attn_R_50_FPN as X-50 32x4d": (LSTM_PAPER, X50_32X4D),
    "LSTM, X-50 32x4d, former Detectron2-default network": (
        LSTM_PAPER, X50_32X4D + FORMER_D2_NETWORK + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.75"]),
    "LSTM, X-50 32x4d, one-level network on res4 + fg IoU 0.5": (
        LSTM_PAPER, X50_32X4D + FINE_MAP_FG05),
}
# the timed paths of a row, as the reference file names them
REFERENCE_KEYS = ("inference", "cls", "train")


def load_reference(path: str) -> Dict[str, Dict[str, float]]:
    """Row label -> {"inference", "cls", "train"} -> the original code's seconds, from the
    reference file's ``rows``: each row's ``seconds`` (checked against its ``measured_seconds``
    over its ``ratio``), or, for a row with ``same_as``, the named row's."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    reference: Dict[str, Dict[str, float]] = {}
    for label, row in rows.items():
        if "same_as" in row:
            continue
        for key in REFERENCE_KEYS:
            derived = row["measured_seconds"][key] / row["ratio"][key]
            if not math.isclose(row["seconds"][key], derived, rel_tol=1e-12):
                raise ValueError(f"{path}: {label}: seconds.{key} {row['seconds'][key]} is not "
                                 f"measured_seconds / ratio = {derived}")
        reference[label] = {key: float(row["seconds"][key]) for key in REFERENCE_KEYS}
    for label, row in rows.items():
        if "same_as" in row:
            if row["same_as"] not in reference:
                raise ValueError(f"{path}: {label}: same_as {row['same_as']!r} is not a row "
                                 "with seconds")
            reference[label] = dict(reference[row["same_as"]])
    return reference


def vs_original(reference: Mapping[str, Mapping[str, float]], label: str, what: str,
                seconds: float) -> str:
    """``seconds`` over the original's seconds of row ``label`` and path ``what`` ("1.23x"),
    "-" without a reference."""
    ref: Optional[float] = reference.get(label, {}).get(what)
    return "-" if ref is None else f"{seconds / ref:.2f}x"


def bench_paper(repo: str, size: int, iters: int, warmup: int, device: str,
                precision: Precision) -> Tuple[List[list], List[list]]:
    """Rows [label, detections, inference s, GFLOP, cls path s, GFLOP, train s, GFLOP] of the
    paper configs' table, and the inference stage breakdown (s / GFLOP) of each row."""
    inputs = make_inputs(size, 2)
    rows, stage_rows = [], []
    for label, (config, opts) in PAPER_ROWS.items():
        logger.info("paper row: %s", label)
        cfg, model, opt = build_model(repo, config, opts, size, device)
        model.eval()
        x = cls_input(inputs[0])
        n_det: List[int] = []

        def infer(model=model, x=x, n_det=n_det):
            with torch.no_grad(), precision.autocast(device):
                n_det.append(len(model([x])[0]["instances"]))

        def cls_path(model=model, x=x):
            with torch.no_grad(), image_cls_only(model), precision.autocast(device):
                model([x])

        t_inf, gf_inf = measure(infer, iters, warmup, device, precision)
        with StageTimer(model, device=device) as timer:
            infer()
        with precision.counting_flops():
            stage_gf = stage_flops(model, infer)
        t_cls, gf_cls = measure(cls_path, iters, warmup, device, precision)
        model.train()
        model.image_loss_enabled = True
        batch = [seg_input(inputs[0]), cls_input(inputs[1])]

        def step(model=model, batch=batch, opt=opt):
            with EventStorage(0), precision.autocast(device):
                loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

        t_train, gf_train = measure(step, iters, warmup, device, precision)
        rows.append([label, n_det[-1], t_inf, gf_inf, t_cls, gf_cls, t_train, gf_train])
        stage_rows.append([label] + [
            f"{timer.seconds[s]:.3f} / {stage_gf[s]:.1f}" if s in timer.seconds else "-"
            for s in ONESHOT_STAGES] + [f"{t_inf:.3f} / {gf_inf:.1f}"])
        del model, opt
    return rows, stage_rows


def print_paper_table(repo: str, reference: Mapping[str, Mapping[str, float]], size: int,
                      iters: int, warmup: int, device: str, device_name: str,
                      precision: Precision) -> None:
    """Run :func:`bench_paper` and print its tables, "vs original" from ``reference`` (see
    :func:`load_reference`)."""
    peak = matmul_peak_gflops(device)
    rows, stage_rows = bench_paper(repo, size, iters, warmup, device, precision)
    table = []
    for label, n_det, t_inf, gf_inf, t_cls, gf_cls, t_train, gf_train in rows:
        table.append([label, n_det, f"{t_inf:.3f}", f"{gf_inf:.1f}",
                      f"{100 * gf_inf / t_inf / peak:.0f} %",
                      vs_original(reference, label, "inference", t_inf),
                      f"{t_cls:.3f}", f"{gf_cls:.1f}",
                      vs_original(reference, label, "cls", t_cls),
                      f"{t_train:.3f}", f"{gf_train:.1f}",
                      vs_original(reference, label, "train", t_train)])
    print(f"\nPaper configs, {size}x{size}, batch 1, random weights, median of "
          f"{iters} runs, {settings_line(precision.amp, device_name, peak)}\n")
    print(tabulate(table, headers=[
        "pair", "detections", "inference s", "GFLOP", "of peak", "vs original",
        "cls path s", "GFLOP", "vs original", "train iter (seg + cls) s", "GFLOP",
        "vs original"], tablefmt="pipe"))
    print("\nInference by stage, s / GFLOP (other = decoding, NMS, selection, mask pasting)\n")
    print(tabulate(stage_rows, headers=["pair"] + list(ONESHOT_STAGES) + ["total"],
                   tablefmt="pipe"))
