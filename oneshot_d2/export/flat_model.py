"""The inference path of a oneshot_d2 model as a module of one image tensor in and a tuple of
tensors out: what ``torch.jit.trace`` and ONNX export take.

The boundary is Detectron2's ``do_postprocess=False`` inference of one image at the model's
input size (after the predictor's resize): lesion boxes, scores, classes and 28 x 28 mask
probabilities, and -- for slice classifiers -- the class probabilities, the fixed-size RoI batch
(beta boxes and scores) and the image head's explanation tensors. Pasting masks at the slice's
size and rescaling boxes stay in Python (:func:`unflatten`), as in Detectron2's own
``TracingAdapter`` + ``detector_postprocess``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Sequence, Tuple
from unittest import mock

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from ..errors import ConfigError

__all__ = ["FlatInferenceModel", "model_kind", "output_names", "patch_builtin_len",
           "unflatten", "output_differences", "outside_tolerance", "KINDS", "TOLERANCES"]

# What a model computes, by kind: "oneshot" (OneShotRCNN: lesions + slice class), "rcnn"
# (CTRCNN / GeneralizedRCNN: lesions), "classifier" (CTImageClassifier: slice class).
KINDS = ("oneshot", "rcnn", "classifier")
LESION_OUTPUTS = ("pred_boxes", "scores", "pred_classes", "pred_masks")
CLS_OUTPUTS = ("image_cls",)
ROI_BATCH_OUTPUTS = ("image_cls_boxes", "image_cls_box_scores")
EXPLANATION_PREFIX = "explanation."


def model_kind(model: nn.Module) -> str:
    """The :data:`KINDS` entry of a built oneshot_d2 / Detectron2 model."""
    has_rois = hasattr(model, "roi_heads")
    has_head = hasattr(model, "image_head")
    if has_rois and has_head:
        return "oneshot"
    if has_rois:
        return "rcnn"
    if has_head:
        return "classifier"
    raise ConfigError(f"{type(model).__name__} cannot be exported: neither an R-CNN nor an "
                      "image classifier")


def output_names(kind: str, explanation_keys: Sequence[str] = ()) -> List[str]:
    """Names of the flat outputs, in order (the exported files' output names)."""
    if kind not in KINDS:
        raise ConfigError(f"model kind must be one of {KINDS}, got {kind!r}")
    names: List[str] = []
    if kind in ("oneshot", "rcnn"):
        names += LESION_OUTPUTS
    if kind in ("oneshot", "classifier"):
        names += CLS_OUTPUTS
    if kind == "oneshot":
        names += ROI_BATCH_OUTPUTS
        names += [EXPLANATION_PREFIX + k for k in explanation_keys]
    return names


# Detectron2's heads call len() on Instances; the builtin converts the count to a Python int,
# which tracing freezes into a constant. ``obj.__len__()`` keeps it symbolic. Detectron2 has this
# patch in detectron2.export.torchscript_patch, but that package cannot be imported without
# caffe2 (Detectron2 v0.6 on a modern torch).
_LEN_MODULES = ("detectron2.modeling.roi_heads.fast_rcnn",
                "detectron2.modeling.roi_heads.mask_head")


@contextlib.contextmanager
def patch_builtin_len() -> Iterator[None]:
    """Within the block, ``len(x)`` in Detectron2's box and mask heads is ``x.__len__()``."""
    with contextlib.ExitStack() as stack:
        for module in _LEN_MODULES:
            stack.enter_context(mock.patch(module + ".len", create=True,
                                           side_effect=lambda obj: obj.__len__()))
        yield


GivenBoxesForward = Callable[[Dict[str, torch.Tensor], List[Instances]], List[Instances]]


def _with_one_more_box(forward_with_given_boxes: GivenBoxesForward) -> GivenBoxesForward:
    """``ROIHeads.forward_with_given_boxes`` run on the detections plus one box, whose outputs
    are then dropped: the mask head never sees zero boxes. Exported GroupNorm reshapes its
    input to (N, groups, -1), which ONNX Runtime cannot do for N = 0 (a slice without
    lesions); the extra box changes no other box's outputs (GroupNorm is per box)."""
    def run(features: Dict[str, torch.Tensor], instances: List[Instances]) -> List[Instances]:
        out = []
        for inst in instances:
            extra = Instances(inst.image_size)
            extra.pred_boxes = Boxes(inst.pred_boxes.tensor.new_tensor([[0.0, 0.0, 1.0, 1.0]]))
            extra.scores = inst.scores.new_zeros(1)
            extra.pred_classes = inst.pred_classes.new_zeros(1)
            both = forward_with_given_boxes(features, [Instances.cat([inst, extra])])[0]
            out.append(both[: both.pred_classes.shape[0] - 1])
        return out
    return run


class FlatInferenceModel(nn.Module):
    """``model``'s inference on one image, tensors out (see module docstring).

    Args:
        model: a built oneshot_d2 model in eval mode (``OneShotRCNN``, ``CTRCNN``,
            ``CTImageClassifier``).

    ``forward(image)``: ``image`` (C, H, W) uint8 (or float) at the model's input size, as
    ``OneShotPredictor.model_input`` gives it; returns the tuple named by :attr:`names`:
    ``pred_boxes`` (n, 4) XYXY at the input size, ``scores`` (n,), ``pred_classes`` (n,) int64,
    ``pred_masks`` (n, 1, 28, 28) probabilities, ``image_cls`` (C,), ``image_cls_boxes``
    (beta, 4), ``image_cls_box_scores`` (beta,), ``explanation.<key>`` (the head's tensors).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.training:
            raise ValueError("export needs the model in eval mode")
        padding = getattr(getattr(model, "roi_heads", None), "roi_padding", "cyclic")
        if padding != "cyclic":
            raise ConfigError(f"MODEL.ONESHOT.ROI_PADDING {padding!r} draws random numbers at "
                              "inference and cannot be exported; export with 'cyclic'")
        self.model = model
        self.kind = model_kind(model)
        self.explanation_keys: Tuple[str, ...] = ()
        self.names: List[str] = output_names(self.kind)
        # eval mode on the wrapper too: an exporter that restores the wrapper's mode afterwards
        # would otherwise put the model into training mode
        self.eval()

    def probe(self, image: torch.Tensor) -> None:
        """Run once in eager mode to learn the image head's explanation keys (their set is the
        head's, the same for every image); later calls do nothing."""
        if self.kind == "oneshot" and not self.explanation_keys:
            with torch.no_grad():
                out = self.model.inference([{"image": image}], do_postprocess=False)[0]
            self.explanation_keys = tuple(out["image_cls_explanation"])
            self.names = output_names(self.kind, self.explanation_keys)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.kind == "classifier":
            return (self.model.inference([{"image": image}])[0]["image_cls"],)
        roi_heads = self.model.roi_heads
        with mock.patch.object(roi_heads, "forward_with_given_boxes",
                               _with_one_more_box(roi_heads.forward_with_given_boxes)):
            out = self.model.inference([{"image": image}], do_postprocess=False)[0]
        # GeneralizedRCNN gives the Instances themselves, OneShotRCNN a dict
        inst = out["instances"] if isinstance(out, dict) else out
        flat = [inst.pred_boxes.tensor, inst.scores, inst.pred_classes, inst.pred_masks]
        if self.kind == "oneshot":
            flat += [out["image_cls"], out["image_cls_boxes"], out["image_cls_box_scores"]]
            flat += [out["image_cls_explanation"][k] for k in self.explanation_keys]
        return tuple(flat)


def unflatten(names: Sequence[str], flat: Sequence[torch.Tensor],
              input_size: Tuple[int, int]) -> Dict:
    """The flat outputs back in the shape of ``model.inference(..., do_postprocess=False)[0]``:
    ``instances`` (an ``Instances`` of ``input_size`` (H, W), with ``pred_boxes``, ``scores``,
    ``pred_classes``, ``pred_masks``), ``image_cls``, ``image_cls_boxes``,
    ``image_cls_box_scores``, ``image_cls_explanation``; each key only where the model has it."""
    if len(names) != len(flat):
        raise ValueError(f"{len(flat)} outputs for {len(names)} names")
    named = {n: torch.as_tensor(t) for n, t in zip(names, flat)}
    out: Dict = {}
    if "pred_boxes" in named:
        inst = Instances(tuple(input_size))
        inst.pred_boxes = Boxes(named["pred_boxes"].reshape(-1, 4))
        inst.scores = named["scores"]
        inst.pred_classes = named["pred_classes"].long()
        inst.pred_masks = named["pred_masks"]
        out["instances"] = inst
    for key in CLS_OUTPUTS + ROI_BATCH_OUTPUTS:
        if key in named:
            out[key] = named[key]
    if "image_cls_boxes" in named:
        out["image_cls_explanation"] = {n[len(EXPLANATION_PREFIX):]: t for n, t in named.items()
                                        if n.startswith(EXPLANATION_PREFIX)}
    return out


# Largest difference accepted between an exported model's outputs and PyTorch's, per output
# (absolute; explanation tensors relative to their largest magnitude, at least 1). Measured
# with the demo model (docs/deploy.md): ONNX Runtime within 1.5e-5 px in boxes, 2.2e-6 in
# scores and 1.2e-7 in class probabilities; the margins leave room for other CPUs' kernels.
TOLERANCES = {"pred_boxes": 0.05, "scores": 1e-4, "pred_classes": 0.0, "pred_masks": 1e-3,
              "image_cls": 1e-4, "image_cls_boxes": 0.05, "image_cls_box_scores": 1e-4}
EXPLANATION_TOLERANCE = 1e-3


def output_differences(names: Sequence[str], expected: Sequence[torch.Tensor],
                       got: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Per output name, the largest absolute difference (explanation tensors: relative to
    max(1, their largest magnitude)); ``inf`` where the shapes differ (e.g. another number of
    lesions)."""
    if not len(names) == len(expected) == len(got):
        raise ValueError(f"{len(names)} output names, {len(expected)} expected outputs, "
                         f"{len(got)} outputs")
    diffs: Dict[str, float] = {}
    for name, a, b in zip(names, expected, got):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        if a.shape != b.shape:
            diffs[name] = float("inf")
            continue
        d = float((a - b).abs().max()) if a.numel() else 0.0
        if name.startswith(EXPLANATION_PREFIX) and a.numel():
            d /= max(1.0, float(a.abs().max()))
        diffs[name] = d
    return diffs


def outside_tolerance(diffs: Dict[str, float]) -> List[str]:
    """Names of :func:`output_differences` entries beyond :data:`TOLERANCES` (NaN is)."""
    return [n for n, d in diffs.items()
            if not d <= TOLERANCES.get(n, EXPLANATION_TOLERANCE)]
