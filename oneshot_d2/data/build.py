"""Training data for the one-shot model: one segmentation batch + one classification batch per
iteration (``PairedDataLoader``), each from Detectron2's ``build_detection_train_loader``."""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List

from detectron2.data import (
    DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts,
)

__all__ = ["PairedDataLoader", "build_oneshot_train_loader"]


class PairedDataLoader:
    """Yields ``seg_batch + cls_batch`` (one list of dataset-mapper dicts) per iteration.
    Segmentation dicts carry ``instances``; classification dicts carry ``image_label``."""

    def __init__(self, seg_loader: Iterable[List[Dict]], cls_loader: Iterable[List[Dict]]):
        self.seg_loader = seg_loader
        self.cls_loader = cls_loader

    def __iter__(self) -> Iterator[List[Dict]]:
        for seg_batch, cls_batch in zip(self.seg_loader, self.cls_loader):
            yield list(seg_batch) + list(cls_batch)


def build_oneshot_train_loader(cfg):
    """``DATASETS.TRAIN`` (``SOLVER.IMS_PER_BATCH`` images) paired with ``DATASETS.TRAIN_CLS``
    (``SOLVER.CLS_IMS_PER_BATCH`` images); only the former when ``TRAIN_CLS`` is empty."""
    seg_loader = build_detection_train_loader(cfg)
    if not cfg.DATASETS.TRAIN_CLS:
        return seg_loader
    cls_dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN_CLS, filter_empty=False)
    missing = [d["file_name"] for d in cls_dicts[:1] if "image_label" not in d]
    if missing:
        raise ValueError(f"DATASETS.TRAIN_CLS {tuple(cfg.DATASETS.TRAIN_CLS)}: dataset dicts "
                         f"have no 'image_label' (e.g. {missing[0]}); register them with "
                         "register_covidx_cls / register_csv_cls")
    cls_loader = build_detection_train_loader(
        cfg, dataset=cls_dicts, mapper=DatasetMapper(cfg, is_train=True),
        total_batch_size=cfg.SOLVER.CLS_IMS_PER_BATCH)
    return PairedDataLoader(seg_loader, cls_loader)
