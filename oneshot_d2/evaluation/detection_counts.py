"""``DetectionCountEvaluator``: how many lesions a detector finds on slices without lesion masks,
grouped by a field of the dataset dicts (e.g. MosMed's ``severity`` CT-0 .. CT-4).

A check that a lesion detector trained on one set transfers to another (other scanner, other
preprocessing): on a set graded by lung involvement, slices of normal studies should hold the
fewest detections and the most involved grades the most.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional

import numpy as np
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from ._gather import gather_on_main

__all__ = ["DetectionCountEvaluator"]

logger = logging.getLogger(__name__)


class DetectionCountEvaluator(DatasetEvaluator):
    """Per group: slices, mean detections per slice, share of slices with at least one
    detection, mean detected area (share of the slice's pixels), for detections scoring at
    least ``score_thresh``.

    Results: ``{"detections": {"<group>/per_slice": ..., "<group>/any": ... (percent),
    "<group>/area": ... (percent), "<group>/slices": ...}}`` and the same over all slices under
    ``all/...``.
    """

    def __init__(self, group_by: str, score_thresh: float = 0.5, distributed: bool = True):
        """
        Args:
            group_by: the dataset-dict field to group by (a missing field groups as ``"-"``).
            score_thresh: detections below this score are not counted.
            distributed: gather the counts from all processes.
        """
        self.group_by = group_by
        self.score_thresh = score_thresh
        self.distributed = distributed
        self._rows: List[Dict] = []

    def reset(self):
        self._rows = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            inst = out["instances"]
            keep = inst.scores >= self.score_thresh
            area = 0.0
            if inst.has("pred_masks") and bool(keep.any()):
                union = inst.pred_masks[keep].any(dim=0)
                area = float(union.float().mean())
            self._rows.append({"group": str(x.get(self.group_by, "-")),
                               "count": int(keep.sum()), "area": area})

    def evaluate(self) -> Optional[Dict]:
        rows = gather_on_main(self._rows, self.distributed)
        if rows is None:
            return {}
        groups: Dict[str, List[Dict]] = defaultdict(list)
        for r in rows:
            groups[r["group"]].append(r)
        groups["all"] = list(rows)
        res: Dict[str, float] = OrderedDict()
        table = []
        for name in sorted(groups, key=lambda g: (g == "all", g)):
            members = groups[name]
            counts = np.array([r["count"] for r in members], dtype=np.float64)
            areas = np.array([r["area"] for r in members], dtype=np.float64)
            res[f"{name}/slices"] = float(len(members))
            res[f"{name}/per_slice"] = float(counts.mean())
            res[f"{name}/any"] = 100.0 * float((counts > 0).mean())
            res[f"{name}/area"] = 100.0 * float(areas.mean())
            table.append([name, len(members), counts.mean(), 100.0 * (counts > 0).mean(),
                          100.0 * areas.mean()])
        logger.info("Detections (score >= %.2f) by %s:\n%s", self.score_thresh, self.group_by,
                    tabulate(table, headers=[self.group_by, "slices", "per slice",
                                             "% with any", "% of slice"],
                             tablefmt="pipe", floatfmt=".2f"))
        return {"detections": res}
