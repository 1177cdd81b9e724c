"""RoI batch selection for the classification branch (papers: "RoI batch selection").

Per image, from the frozen classification box branch's class-specific boxes and scores:
drop background, drop degenerate boxes, class-wise NMS, rank by score, keep the top ``beta``
(every score is accepted: the papers' threshold of -0.01 lets everything through), pad to exactly
``beta`` boxes, optionally re-order by the distance of each box's top-left corner from the origin.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torchvision.ops import batched_nms

from ...config import ROI_PADDING_MODES as PADDING_MODES

__all__ = ["RoIBatch", "select_roi_batch", "PADDING_MODES"]



class RoIBatch(NamedTuple):
    """The ``beta`` RoIs of one image.

    Attributes:
        boxes: (beta, 4) XYXY boxes in the input image's coordinates.
        scores: (beta,) foreground class probabilities of the boxes (0 for the whole-image box).
        classes: (beta,) foreground class index of each box.
        num_kept: how many distinct boxes survived NMS before padding (0..beta).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    num_kept: int


def _pad_index(n: int, beta: int, mode: str, device: torch.device) -> torch.Tensor:
    """Indices into ``n`` kept boxes that fill ``beta`` slots.

    ``cyclic`` (default): 0, 1, .., n-1, 0, 1, .. -- deterministic.
    ``original``: contiguous runs in score order with random run boundaries, as the original code
    (a sorted random sample of n-1 cut points in 1..beta-1); uses torch's global RNG.
    """
    if mode == "cyclic" or n == 1:
        return torch.arange(beta, device=device) % n
    if mode != "original":
        raise ValueError(f"RoI padding mode must be one of {PADDING_MODES}, got {mode!r}")
    cuts = torch.randperm(beta - 1)[: n - 1].add(1).sort().values.tolist()
    bounds = [0] + cuts + [beta]
    return torch.cat([torch.full((bounds[i + 1] - bounds[i],), i, dtype=torch.long)
                      for i in range(n)]).to(device)


def select_roi_batch(boxes: torch.Tensor, scores: torch.Tensor, image_size: Tuple[int, int],
                     beta: int, nms_thresh: float = 0.25, order_by_distance: bool = False,
                     padding: str = "cyclic", min_area: float = 1e-5,
                     whole_image: bool = False) -> RoIBatch:
    """Select the RoI batch of one image.

    Args:
        boxes: (R, K, 4) class-specific boxes of R proposals for K foreground classes, already
            clipped to the image.
        scores: (R, K) foreground class probabilities (background column removed).
        image_size: (height, width) of the image, for the whole-image fallback box.
        beta: RoIs to return.
        nms_thresh: class-wise NMS IoU threshold (papers: 0.25).
        order_by_distance: re-order the beta RoIs by ascending Euclidean distance of the box's
            top-left corner from the image origin (LSTM paper, 4.1); else score order.
        padding: ``cyclic`` (deterministic) or ``original`` (random runs); see :func:`_pad_index`.
        min_area: boxes with area <= this are dropped (the original's only size filter).
        whole_image: the first RoI is the whole image (score 0), the other ``beta - 1`` are
            selected as above (not in the papers: the slice's context beside its lesions).

    Returns:
        :class:`RoIBatch` with exactly ``beta`` rows.
    """
    if beta < 1 or (whole_image and beta < 2):
        raise ValueError(f"beta must be >= {2 if whole_image else 1}, got {beta}")
    if whole_image:
        rest = select_roi_batch(boxes, scores, image_size, beta - 1, nms_thresh,
                                order_by_distance, padding, min_area)
        return RoIBatch(torch.cat([_whole_image_box(image_size, rest.boxes), rest.boxes]),
                        torch.cat([rest.scores.new_zeros(1), rest.scores]),
                        torch.cat([rest.classes.new_zeros(1), rest.classes]), rest.num_kept)
    num_classes = scores.shape[1] if scores.dim() == 2 else 1
    flat_boxes = boxes.reshape(-1, 4)
    flat_scores = scores.reshape(-1)
    flat_classes = torch.arange(num_classes, device=scores.device).repeat(scores.shape[0])
    wh = (flat_boxes[:, 2:] - flat_boxes[:, :2]).clamp(min=0)
    valid = (wh[:, 0] * wh[:, 1]) > min_area
    flat_boxes, flat_scores = flat_boxes[valid], flat_scores[valid]
    flat_classes = flat_classes[valid]

    keep = batched_nms(flat_boxes.float(), flat_scores.float(), flat_classes, nms_thresh)[:beta]
    # The whole-image box (score 0, class 0) is appended as the last candidate: it fills the
    # batch when no box survives. Tensor arithmetic, no Python branch on the number kept, so
    # a traced / exported model pads alike for every image (oneshot_d2.export).
    kept_count = torch.ones_like(keep).sum()
    whole_index = torch.ones_like(flat_classes).sum().view(1)  # == len(flat_boxes)
    candidates = torch.cat([keep, whole_index])
    if padding == "cyclic":
        idx = candidates[torch.arange(beta, device=keep.device) % kept_count.clamp(min=1)]
    else:
        n = int(keep.numel())
        idx = candidates[_pad_index(n, beta, padding, keep.device)] if n else \
            candidates[-1:].expand(beta)
    all_boxes = torch.cat([flat_boxes, _whole_image_box(image_size, flat_boxes)])
    sel_boxes = all_boxes[idx]
    sel_scores = torch.cat([flat_scores, flat_scores.new_zeros(1)])[idx]
    sel_classes = torch.cat([flat_classes, flat_classes.new_zeros(1)])[idx]
    if order_by_distance:
        order = _stable_argsort(sel_boxes[:, :2].float().norm(dim=1))
        sel_boxes, sel_scores, sel_classes = sel_boxes[order], sel_scores[order], sel_classes[order]
    return RoIBatch(sel_boxes.contiguous(), sel_scores.contiguous(), sel_classes.contiguous(),
                    keep.numel())


def _stable_argsort(values: torch.Tensor) -> torch.Tensor:
    """Indices that sort the 1-D ``values`` ascending, ties in index order (what
    ``torch.sort(stable=True)`` gives), from pairwise comparisons: ONNX has no stable sort,
    and the RoI batch is short (beta elements)."""
    index = torch.arange(values.shape[0], device=values.device)
    before = (values[None, :] < values[:, None]) | (
        (values[None, :] == values[:, None]) & (index[None, :] < index[:, None]))
    rank = before.sum(dim=1)  # a permutation of 0..beta-1
    return torch.zeros_like(rank).scatter(0, rank, index)


def _whole_image_box(image_size: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(1, 4) XYXY box of the whole image, dtype and device of ``like``. ``image_size``
    (height, width) may hold ints or, while tracing, 0-dim tensors (kept symbolic)."""
    h, w = (torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in image_size)
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.stack([zero, zero, w, h]).view(1, 4)
