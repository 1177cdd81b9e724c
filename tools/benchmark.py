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

Study rows (``--rows study``): a phantom patient volume of ``--study-slices`` slices of
``--study-size`` px, written as NIfTI, through ``tools/predict.py``'s pipeline end to end (read,
window, model in batches of ``--study-batch``, lung mask, report and study folder; no overlays),
with the model of ``--study-config`` / ``--study-weights`` (default: the ``make demo`` model if
trained, else random weights) at its training resolution and at each ``--study-input-sizes``:

    python tools/benchmark.py --rows study --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch

import oneshot_d2  # noqa: F401  isort: skip
from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from torch.utils.flop_counter import FlopCounterMode

from oneshot_d2 import add_oneshot_config
from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.data.phantom import COVID, CP, render_slice, sample_anatomy
from oneshot_d2.data.transforms import lung_window
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.profiling import (
    ONESHOT_STAGES,
    StageTimer,
    matmul_peak_gflops,
    stage_flops,
    synchronize,
)
from oneshot_d2.errors import UsageError
from oneshot_d2.modeling import image_cls_only

logger = logging.getLogger("benchmark")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACKBONES = {
    # name: (config, extra options)
    "R18": ("configs/Base-OneShot-R18-FPN-GN.yaml", []),
    "R50": ("configs/Base-OneShot-RCNN-FPN.yaml", ["MODEL.RESNETS.NORM", "GN",
                                                   "MODEL.FPN.NORM", "GN",
                                                   "MODEL.BACKBONE.FREEZE_AT", "0"]),
}
MODELS = {
    "mask_rcnn": ["MODEL.META_ARCHITECTURE", "CTRCNN",  # same input normalisation
                  "MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
    "oneshot_affinity": ["MODEL.ONESHOT.IMAGE_HEAD.NAME", "AffinityHead"],
    "oneshot_lstm_attn": ["MODEL.ONESHOT.IMAGE_HEAD.NAME", "LSTMAttentionHead",
                          "MODEL.ONESHOT.ROI_BATCH_SIZE", "16",
                          "MODEL.ONESHOT.ORDER_BY_DISTANCE", "True"],
}


def build(backbone: str, model: str, size: int, device: str):
    config, extra = BACKBONES[backbone]
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(extra + MODELS[model] + [
        "MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "100",
        "SOLVER.BASE_LR", "0.001"])
    torch.manual_seed(0)
    m = OneShotTrainer.build_model(cfg)
    if hasattr(m.roi_heads, "copy_seg_to_cls"):
        m.roi_heads.copy_seg_to_cls()
    return cfg, m, OneShotTrainer.build_optimizer(cfg, m)


def make_inputs(size: int, n: int, seed: int = 0) -> List[Dict]:
    """n phantom slices as Detectron2 model inputs with lesion instances and a slice label."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        s = render_slice(rng, size, COVID if i % 2 == 0 else CP, sample_anatomy(rng), 0.6)
        img = np.repeat(lung_window(s.hu)[:, :, None], 3, axis=2)
        inst = Instances((size, size))
        masks = [(s.mask == v) for v in (2, 3) if (s.mask == v).sum() > 100] or [s.mask == 1]
        bm = BitMasks(torch.from_numpy(np.stack(masks)))
        inst.gt_masks = bm
        inst.gt_boxes = bm.get_bounding_boxes()
        inst.gt_classes = torch.zeros(len(masks), dtype=torch.long)
        items.append({"image": torch.from_numpy(img.transpose(2, 0, 1).copy()),
                      "height": size, "width": size, "instances": inst,
                      "image_label": s.label, "file_name": f"phantom_{i}"})
    return items


def _seg(x):
    return {k: v for k, v in x.items() if k != "image_label"}


def _cls(x):
    return {k: v for k, v in x.items() if k != "instances"}


def measure(fn: Callable[[], None], iters: int, warmup: int, device: str):
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    with counting_flops(), FlopCounterMode(display=False) as counter:
        fn()
    return statistics.median(times), counter.get_total_flops() / 1e9


def bench_backbone(backbone: str, size: int, iters: int, warmup: int, device: str):
    inputs = make_inputs(size, 2)
    rows = []
    results = {}
    for model_name in MODELS:
        cfg, model, opt = build(backbone, model_name, size, device)
        oneshot = model_name != "mask_rcnn"

        model.eval()

        def infer(model=model):
            with torch.no_grad():
                model([_cls(inputs[0])])

        t, gf = measure(infer, iters, warmup, device)
        results[(model_name, "infer")] = t
        rows.append([backbone, model_name, "inference, 1 image", t, gf, gf / t])

        model.train()
        batches = {"2 seg": [_seg(inputs[0]), _seg(inputs[1])]} if not oneshot else {
            "1 seg + 1 cls": [_seg(inputs[0]), _cls(inputs[1])]}
        if not oneshot:
            batches["1 seg"] = [_seg(inputs[0])]
        for label, batch in batches.items():
            def step(model=model, batch=batch, opt=opt):
                with EventStorage(0):
                    loss = sum(model(batch).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

            t, gf = measure(step, iters, warmup, device)
            results[(model_name, label)] = t
            rows.append([backbone, model_name, f"train iteration, {label}", t, gf, gf / t])
    base_inf, base_train2, base_train1 = (results[("mask_rcnn", k)]
                                          for k in ("infer", "2 seg", "1 seg"))
    for row in rows:
        name, mode, t = row[1], row[2], row[3]
        if name == "mask_rcnn":
            row.append("baseline")
        elif mode.startswith("inference"):
            row.append(f"{100 * (t / base_inf - 1):+.1f} %")
        else:
            row.append(f"{100 * (t / base_train2 - 1):+.1f} % (vs 2 seg); "
                       f"{100 * (t / base_train1 - 1):+.1f} % (vs 1 seg)")
    return rows


# ---- the paper configs' table: 512 px, batch 1, random weights ---------------------------------
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
PAPER_ROWS = {
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
# The original code's seconds per slice on this machine kind (2-core AMD EPYC, 2 threads), for
# the "vs original" columns. The original code is not in this repository: these are the
# earlier project (commit c47b691) measured here with this benchmark (2026-11-23: 1.032 /
# 0.314 / 1.653 s affinity, 1.997 / 1.515 / 9.02 s former LSTM network) divided by the issue's
# measured project / original ratios (0.82 / 0.73 / 0.62 and 2.31 / 1.71 / 1.57). The "former"
# row re-measures the second: its ratios should come out near 2.31 / 1.71 / 1.57; where they do
# not, this machine runs at another speed and every ratio is off by the same factor.
ORIGINAL = {
    "affinity: oneshot_affinity_R_18_faithful": {
        "inference": 1.032 / 0.82, "cls": 0.314 / 0.73, "train": 1.653 / 0.62},
    "LSTM: oneshot_lstm_attn_R_50_FPN as X-50 32x4d": {
        "inference": 1.997 / 2.31, "cls": 1.515 / 1.71, "train": 9.02 / 1.57},
}
for _label in ("LSTM, X-50 32x4d, former Detectron2-default network",
               "LSTM, X-50 32x4d, one-level network on res4 + fg IoU 0.5"):
    ORIGINAL[_label] = ORIGINAL["LSTM: oneshot_lstm_attn_R_50_FPN as X-50 32x4d"]


def build_paper_model(config: str, opts: List[str], size: int, device: str):
    """A paper config with random weights (and the initial weight copy), at ``size`` px."""
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(opts + [
        "MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)])
    torch.manual_seed(0)
    model = OneShotTrainer.build_model(cfg)
    model.roi_heads.copy_seg_to_cls()
    return cfg, model, OneShotTrainer.build_optimizer(cfg, model)


_COUNTING_FLOPS = [False]


@contextlib.contextmanager
def counting_flops():
    """FLOPs are counted in fp32: FlopCounterMode decomposes ops below autocast, which then
    meet mixed dtypes (and the count does not depend on the dtype)."""
    _COUNTING_FLOPS[0] = True
    try:
        yield
    finally:
        _COUNTING_FLOPS[0] = False


def autocast(device: str, enabled: bool):
    """Mixed precision for ``--amp``: float16 on CUDA, bfloat16 on the CPU."""
    if not enabled or _COUNTING_FLOPS[0]:
        return contextlib.nullcontext()
    cuda = device.startswith("cuda")
    return torch.autocast(device_type="cuda" if cuda else "cpu",
                          dtype=torch.float16 if cuda else torch.bfloat16)


def bench_paper(size: int, iters: int, warmup: int, device: str, amp: bool = False):
    """Rows of the paper configs' table and the inference stage breakdown of each row."""
    inputs = make_inputs(size, 2)
    rows, stage_rows = [], []
    for label, (config, opts) in PAPER_ROWS.items():
        logger.info("paper row: %s", label)
        cfg, model, opt = build_paper_model(config, opts, size, device)
        model.eval()
        x = _cls(inputs[0])
        n_det = []

        def infer(model=model, x=x, n_det=n_det):
            with torch.no_grad(), autocast(device, amp):
                n_det.append(len(model([x])[0]["instances"]))

        def cls_path(model=model, x=x):
            with torch.no_grad(), image_cls_only(model), autocast(device, amp):
                model([x])

        t_inf, gf_inf = measure(infer, iters, warmup, device)
        with StageTimer(model, device=device) as timer:
            infer()
        with counting_flops():
            stage_gf = stage_flops(model, infer)
        t_cls, gf_cls = measure(cls_path, iters, warmup, device)
        model.train()
        model.image_loss_enabled = True
        batch = [_seg(inputs[0]), _cls(inputs[1])]

        def step(model=model, batch=batch, opt=opt):
            with EventStorage(0), autocast(device, amp):
                loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

        t_train, gf_train = measure(step, iters, warmup, device)
        rows.append([label, n_det[-1], t_inf, gf_inf, t_cls, gf_cls, t_train, gf_train])
        stage_rows.append([label] + [
            f"{timer.seconds[s]:.3f} / {stage_gf[s]:.1f}" if s in timer.seconds else "-"
            for s in ONESHOT_STAGES] + [f"{t_inf:.3f} / {gf_inf:.1f}"])
        del model, opt
    return rows, stage_rows


def phantom_slices(n: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """n lung-window uint8 phantom slices (COVID-like and pneumonia-like alternating)."""
    rng = np.random.default_rng(seed)
    return [lung_window(render_slice(rng, size, COVID if i % 2 == 0 else CP,
                                     sample_anatomy(rng), 0.6).hu) for i in range(n)]


def bench_throughput(config: str, batches: List[int], slices: int, size: int, device: str,
                     threads: int, peak: float, amp: bool = False) -> List[List]:
    """Batched inference through :class:`OneShotPredictor` (random weights, its lesion score
    threshold): one row per batch size and output set."""
    from oneshot_d2.config import load_config
    from oneshot_d2.inference import OneShotPredictor

    images = phantom_slices(slices, size)
    rows = []
    for batch in batches:
        for outputs in ("lesions + slice class", "slice class only"):
            cfg = load_config(os.path.join(REPO, config), [
                "MODEL.DEVICE", device, "MODEL.WEIGHTS", "",
                "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)])
            torch.manual_seed(0)
            predictor = OneShotPredictor(cfg, batch_size=batch, allow_random_weights=True)
            model = predictor.model
            def outputs_ctx(model=model, outputs=outputs):
                return image_cls_only(model) if outputs == "slice class only" else \
                    contextlib.nullcontext()

            with outputs_ctx(), counting_flops():
                flops = stage_flops(model, functools.partial(predictor, images[:batch]))
            with outputs_ctx(), autocast(device, amp):
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


DEMO_CONFIG = "configs/quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml"
DEMO_WEIGHTS = "output/oneshot_affinity_R_18_FPN_phantom_quick/model_final.pth"


def bench_study(config: str, weights: str, slices: int, size: int, input_sizes: List[int],
                batch: int, device: str) -> List[List]:
    """Rows of the study benchmark: seconds per stage of one predict run (see module doc)."""
    import tempfile

    from oneshot_d2.config import load_config
    from oneshot_d2.data.phantom_study import render_phantom_study, write_nifti_volume
    from oneshot_d2.inference import (
        OneShotPredictor,
        find_studies,
        predict_study,
        study_report,
        write_study,
    )

    t = time.perf_counter()
    study = render_phantom_study(COVID, num_slices=slices, size=size, seed=0,
                                 slice_spacing_mm=1.25)
    logger.info("rendered a %d-slice %d px phantom study in %.0f s", slices, size,
                time.perf_counter() - t)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "study.nii.gz")
        write_nifti_volume(path, study.hu, study.spacing)
        for input_size in input_sizes:
            opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", weights]
            if input_size:
                opts += ["INPUT.MIN_SIZE_TEST", str(input_size),
                         "INPUT.MAX_SIZE_TEST", str(input_size)]
            cfg = load_config(os.path.join(REPO, config), opts)
            predictor = OneShotPredictor(cfg, batch_size=batch,
                                         allow_random_weights=not weights)
            predictor(np.zeros((2, size, size), np.uint8))  # warm-up
            t0 = time.perf_counter()
            refs, errors = find_studies([path])
            loaded = refs[0].load()
            t1 = time.perf_counter()
            pred = predict_study(predictor, loaded)
            t2 = time.perf_counter()
            report = study_report(pred, predictor, config)
            write_study(tmp, pred, report, cfg.dump(), predictor.image_classes,
                        predictor.lesion_classes)
            t3 = time.perf_counter()
            total = t3 - t0
            stages = (f"read {t1 - t0:.1f} s, window {pred.seconds['window']:.1f} s, model "
                      f"{pred.seconds['model']:.1f} s, lung mask {pred.seconds['lung_mask']:.1f}"
                      f" s, report + write {t3 - t2:.1f} s")
            rows.append([os.path.basename(config), f"{slices} x {size}px -> "
                         f"{cfg.INPUT.MIN_SIZE_TEST}px", batch,
                         "trained" if weights else "random", round(total, 1),
                         round(slices / total, 2), stages,
                         report["patient"]["class"] if report["patient"] else ""])
    return rows


def _vs_original(label: str, what: str, seconds: float) -> str:
    ref = ORIGINAL.get(label, {}).get(what)
    return "-" if ref is None else f"{seconds / ref:.2f}x"


def _settings(args, device: str, peak: float) -> str:
    return (f"{'AMP, ' if args.amp else ''}{device}, torch {torch.__version__}; fp32 matmul "
            f"peak measured in this run: {peak:.0f} GFLOP/s")


def print_paper_table(args, device: str) -> None:
    """The paper configs' table: the paper configs against the original code (see ORIGINAL)."""
    peak = matmul_peak_gflops(args.device)
    rows, stage_rows = bench_paper(args.size, args.iters, args.warmup, args.device, args.amp)
    table = []
    for label, n_det, t_inf, gf_inf, t_cls, gf_cls, t_train, gf_train in rows:
        table.append([label, n_det, f"{t_inf:.3f}", f"{gf_inf:.1f}",
                      f"{100 * gf_inf / t_inf / peak:.0f} %",
                      _vs_original(label, "inference", t_inf),
                      f"{t_cls:.3f}", f"{gf_cls:.1f}", _vs_original(label, "cls", t_cls),
                      f"{t_train:.3f}", f"{gf_train:.1f}",
                      _vs_original(label, "train", t_train)])
    print(f"\nPaper configs, {args.size}x{args.size}, batch 1, random weights, median of "
          f"{args.iters} runs, {_settings(args, device, peak)}\n")
    print(tabulate(table, headers=[
        "pair", "detections", "inference s", "GFLOP", "of peak", "vs original",
        "cls path s", "GFLOP", "vs original", "train iter (seg + cls) s", "GFLOP",
        "vs original"], tablefmt="pipe"))
    print("\nInference by stage, s / GFLOP (other = decoding, NMS, selection, mask pasting)\n")
    print(tabulate(stage_rows, headers=["pair"] + list(ONESHOT_STAGES) + ["total"],
                   tablefmt="pipe"))


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
    p.add_argument("--rows", nargs="+", default=["models"],
                   choices=["models", "study", "paper", "throughput"],
                   help="models: one-shot overhead vs plain Mask R-CNN (default); paper: the "
                        "paper configs vs the original code; throughput: batched inference; "
                        "study: a CT study end to end")
    p.add_argument("--study-config", default=DEMO_CONFIG)
    p.add_argument("--study-weights", default=None,
                   help=f"default: {DEMO_WEIGHTS} when it exists, else random weights")
    p.add_argument("--study-slices", type=int, default=300)
    p.add_argument("--study-size", type=int, default=512)
    p.add_argument("--study-input-sizes", type=int, nargs="+", default=[0, 512],
                   help="model input sizes; 0 = the config's (its training resolution)")
    p.add_argument("--study-batch", type=int, default=8)
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
    if args.warmup < 0 or min(args.study_input_sizes) < 0:
        raise UsageError("--warmup and --study-input-sizes must be >= 0")
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.getLogger("detectron2").setLevel(logging.WARNING)  # no model dumps
    # random-weight predictors: no "classes reported as class_0.." warning per row
    logging.getLogger("oneshot_d2.inference.predictor").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
              else f"CPU, {torch.get_num_threads()} threads")
    if "study" in args.rows:
        weights = args.study_weights
        if weights is None:
            weights = DEMO_WEIGHTS if os.path.isfile(os.path.join(REPO, DEMO_WEIGHTS)) else ""
        rows = bench_study(args.study_config, weights, args.study_slices, args.study_size,
                           args.study_input_sizes, args.study_batch, args.device)
        print(f"\nStudy through tools/predict.py's pipeline (NIfTI in, no overlays), {device}, "
              f"torch {torch.__version__}\n")
        print(tabulate(rows, headers=["config", "study -> model input", "batch", "weights",
                                      "seconds", "slices/s", "where the time goes",
                                      "patient result"], tablefmt="pipe"))
    if "paper" in args.rows:
        print_paper_table(args, device)
    if "throughput" in args.rows:
        peak = matmul_peak_gflops(args.device)
        rows = bench_throughput(args.throughput_config, args.throughput_batches,
                                args.throughput_slices, args.size, args.device,
                                torch.get_num_threads(), peak, args.amp)
        print(f"\nBatched inference through OneShotPredictor, {args.throughput_slices} slices "
              f"of {args.size} px, random weights, {_settings(args, device, peak)}\n")
        print(tabulate(rows, headers=[
            "config", "outputs", "batch", "lesions / slice", "slices/s", "slices per core-s",
            "ms / slice", "GFLOP / slice", "GFLOP/s", "of peak", "ms / slice by stage"],
            tablefmt="pipe"))
    if "models" not in args.rows:
        return 0
    rows = []
    for backbone in args.backbones:
        logger.info("benchmarking %s at %dx%d on %s", backbone, args.size, args.size, args.device)
        rows += bench_backbone(backbone, args.size, args.iters, args.warmup, args.device)
    print(f"\n{args.size}x{args.size}, batch as stated, median of {args.iters} runs, {device}, "
          f"torch {torch.__version__}\n")
    print(tabulate(rows, headers=["backbone", "model", "what", "seconds", "GFLOP", "GFLOP/s",
                                  "overhead vs plain Mask R-CNN"],
                   floatfmt=(None, None, None, ".3f", ".1f", ".1f"), tablefmt="pipe"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="benchmark"))
