"""Training data for the one-shot model: one segmentation batch + one classification batch per
iteration (``PairedDataLoader``), each from Detectron2's ``build_detection_train_loader``."""
from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import RepeatFactorTrainingSampler

from ..errors import ConfigError, DatasetError
from .datasets.covid_ct import CT_CLS_EVALUATOR
from .mapper import CTDatasetMapper

__all__ = ["PairedDataLoader", "build_oneshot_train_loader", "check_image_classes",
           "check_image_class_count", "class_balanced_sampler"]


def check_image_class_count(dataset_name: str, num_classes: int) -> None:
    """Check a classification dataset's metadata ``image_classes`` (when set) against
    ``MODEL.ONESHOT.NUM_IMAGE_CLASSES``, without loading the dataset.

    Raises:
        ValueError: they do not number ``num_classes``.
    """
    classes = MetadataCatalog.get(dataset_name).get("image_classes", None)
    if classes is not None and len(classes) != num_classes:
        raise ConfigError(
            f"dataset {dataset_name!r} has {len(classes)} image classes {list(classes)} but "
            f"MODEL.ONESHOT.NUM_IMAGE_CLASSES is {num_classes}: set it to {len(classes)}")


def check_image_classes(dataset_name: str, num_classes: int,
                        dicts: Optional[List[Dict]] = None) -> None:
    """Check a classification dataset against ``MODEL.ONESHOT.NUM_IMAGE_CLASSES``.

    Args:
        dataset_name: a registered classification dataset.
        num_classes: the model's number of image classes.
        dicts: the dataset's dicts, if already loaded (else loaded from the catalog).
    Raises:
        ValueError: the metadata's ``image_classes`` do not number ``num_classes``, or an
            item's ``image_label`` is missing or outside ``0 .. num_classes - 1``.
    """
    check_image_class_count(dataset_name, num_classes)
    for d in DatasetCatalog.get(dataset_name) if dicts is None else dicts:
        label = d.get("image_label")
        if label is None:
            raise DatasetError(
                f"dataset {dataset_name!r}: {d.get('file_name')} has no image_label (is it a "
                "segmentation dataset? classification sets are registered with "
                "register_covidx_cls / register_csv_cls)")
        if not 0 <= int(label) < num_classes:
            raise DatasetError(
                f"dataset {dataset_name!r}: {d.get('file_name')} has image_label {label!r}, "
                f"outside 0..{num_classes - 1} (MODEL.ONESHOT.NUM_IMAGE_CLASSES={num_classes})")


def class_balanced_sampler(dataset_dicts: Sequence[Dict],
                           seed: Optional[int] = None) -> RepeatFactorTrainingSampler:
    """Detectron2's ``RepeatFactorTrainingSampler`` with repeat factors that draw every slice
    class equally often: an image of class c repeats N_max / N_c times per epoch (stochastic
    rounding), N_c the number of images of class c, N_max that of the largest class."""
    counts = Counter(int(d["image_label"]) for d in dataset_dicts)
    most = max(counts.values())
    factors = torch.tensor([most / counts[int(d["image_label"])] for d in dataset_dicts],
                           dtype=torch.float32)
    return RepeatFactorTrainingSampler(factors, seed=seed)


def _cls_train_loader(cfg, dicts: List[Dict], names: Sequence[str], batch_size: int):
    """The training loader of classification items, class-balanced with
    ``DATALOADER.BALANCE_IMAGE_CLASSES``."""
    sampler = class_balanced_sampler(dicts) if cfg.DATALOADER.BALANCE_IMAGE_CLASSES else None
    return build_detection_train_loader(cfg, dataset=dicts,
                                        mapper=CTDatasetMapper(cfg, True, names),
                                        sampler=sampler, total_batch_size=batch_size)


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
    (``SOLVER.CLS_IMS_PER_BATCH`` images); only the former when ``TRAIN_CLS`` is empty.
    Classification items are drawn class-balanced with ``DATALOADER.BALANCE_IMAGE_CLASSES``
    (:func:`class_balanced_sampler`), whether in ``TRAIN_CLS`` or, for ``CTImageClassifier``,
    in ``TRAIN``."""
    train_cls = [n for n in cfg.DATASETS.TRAIN  # classification sets trained alone
                 if MetadataCatalog.get(n).get("evaluator_type", None) == CT_CLS_EVALUATOR]
    for name in train_cls:
        check_image_classes(name, cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES)
    if train_cls and len(train_cls) == len(cfg.DATASETS.TRAIN):
        seg_loader = _cls_train_loader(cfg, get_detection_dataset_dicts(cfg.DATASETS.TRAIN),
                                       cfg.DATASETS.TRAIN, cfg.SOLVER.IMS_PER_BATCH)
    else:
        seg_loader = build_detection_train_loader(
            cfg, mapper=CTDatasetMapper(cfg, True, cfg.DATASETS.TRAIN))
    if not cfg.DATASETS.TRAIN_CLS:
        return seg_loader
    cls_dicts: List[Dict] = []
    for name in cfg.DATASETS.TRAIN_CLS:
        dicts = DatasetCatalog.get(name)
        check_image_classes(name, cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES, dicts)
        cls_dicts.extend(dicts)
    if not cls_dicts:
        raise DatasetError(f"DATASETS.TRAIN_CLS {tuple(cfg.DATASETS.TRAIN_CLS)} holds no image")
    cls_loader = _cls_train_loader(cfg, cls_dicts, cfg.DATASETS.TRAIN_CLS,
                                   cfg.SOLVER.CLS_IMS_PER_BATCH)
    return PairedDataLoader(seg_loader, cls_loader)
