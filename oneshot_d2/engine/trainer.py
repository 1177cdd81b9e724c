"""``OneShotTrainer``: Detectron2's ``DefaultTrainer`` with oneshot_d2's evaluators and optimizers.

Resume restores the optimizer state too (``oneshot_d2.compat`` remedy 8 on Detectron2 v0.6).
Checkpoints are written atomically and a resume skips corrupt ones
(:class:`~oneshot_d2.checkpoint.AtomicCheckpointer`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from typing import Optional

from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm

from ..checkpoint import AtomicCheckpointer
from ..compat import has_compiled_ops
from ..data.build import build_oneshot_train_loader, check_image_classes
from ..data.datasets.covid_ct import CT_CLS_EVALUATOR
from ..data.datasets.lazy import resolve as resolve_dataset_files
from ..data.mapper import CTDatasetMapper
from ..errors import ConfigError
from ..evaluation import ClassificationEvaluator, PerImageAPEvaluator
from ..evaluation.classification_evaluation import CHOSEN_THRESHOLD
from ..modeling.meta_arch import image_cls_only
from ..modeling.roi_heads import OneShotROIHeads
from .calibration import TemperatureCalibrationHook
from .checks import check_training_config, verify_results
from .hooks import CopyClsBranchesHook, ImageLossStartHook
from .optimizer import build_optimizer
from .utils import unwrap_model

__all__ = ["OneShotTrainer", "build_optimizer"]

logger = logging.getLogger(__name__)


class OneShotTrainer(DefaultTrainer):
    """Detectron2 trainer for oneshot_d2 models: evaluators chosen per dataset
    (``evaluator_type`` in its metadata) and the optimizers of ``SOLVER.OPTIMIZER``."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None,
                        threshold: Optional[float] = None,
                        choose_threshold: bool = False) -> DatasetEvaluator:
        """The evaluator of the dataset's ``evaluator_type``; ``threshold`` / ``choose_threshold``
        are passed to a :class:`ClassificationEvaluator` (its operating point)."""
        # a predefined dataset's file fields (json_file) before the COCO evaluator reads them,
        # even when its test loader has not run yet
        resolve_dataset_files(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "coco":
            tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
            # The fast COCOeval is C++: pycocotools gives the same numbers without it.
            coco = COCOEvaluator(dataset_name, tasks=tasks, distributed=True,
                                 output_dir=output_folder, use_fast_impl=has_compiled_ops())
            if not (cfg.MODEL.MASK_ON and cfg.TEST.PER_IMAGE_AP.ENABLED):
                return coco
            return DatasetEvaluators([coco, PerImageAPEvaluator(
                dataset_name, score_thresh=cfg.TEST.PER_IMAGE_AP.SCORE_THRESH,
                distributed=True, output_dir=output_folder)])
        if evaluator_type == CT_CLS_EVALUATOR:
            check_image_classes(dataset_name, cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES)
            return ClassificationEvaluator(
                dataset_name, distributed=True, output_dir=output_folder,
                f1_weights=tuple(cfg.TEST.CLASSIFICATION.F1_WEIGHTS) or None,
                threshold=threshold, choose_threshold=choose_threshold)
        raise ConfigError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; oneshot_d2 "
            f"evaluates 'coco' (lesion segmentation) and '{CT_CLS_EVALUATOR}' (slice "
            "classification) datasets")

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's ``test``, one dataset at a time, with a one-shot model's inference
        limited to the slice class (:func:`~oneshot_d2.modeling.image_cls_only`: no lesion
        boxes or masks nobody reads) on slice-classification datasets. Same results (tested),
        same return value as ``DefaultTrainer.test``.

        With ``TEST.CLASSIFICATION.THRESHOLD_DATASET`` (and evaluators built here), that dataset
        is evaluated first, its ``chosen_threshold`` is passed to the other classification
        sets' evaluators, and its results are returned too."""
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} "
                             "datasets in DATASETS.TEST")
        inner = unwrap_model(model)
        threshold_set = cfg.TEST.CLASSIFICATION.THRESHOLD_DATASET if evaluators is None else ""
        names = list(dict.fromkeys(([threshold_set] if threshold_set else [])
                                   + list(cfg.DATASETS.TEST)))
        given = dict(zip(cfg.DATASETS.TEST, evaluators or ()))
        threshold = None
        results = OrderedDict()
        for name in names:
            one = cfg.clone()
            one.defrost()
            one.DATASETS.TEST = (name,)
            is_cls = MetadataCatalog.get(name).get("evaluator_type") == CT_CLS_EVALUATOR
            evaluator = given.get(name)
            if evaluator is None and threshold_set:
                evaluator = cls.build_evaluator(
                    one, name, choose_threshold=name == threshold_set,
                    threshold=threshold if is_cls and name != threshold_set else None)
            with image_cls_only(inner) if (is_cls and hasattr(inner, "inference_outputs")) \
                    else contextlib.nullcontext():
                results[name] = super().test(one, model, None if evaluator is None
                                             else [evaluator])
            if name == threshold_set:
                threshold = (results[name] or {}).get("classification", {}).get(
                    CHOSEN_THRESHOLD)
        if len(results) == 1:
            return list(results.values())[0]
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        return build_oneshot_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        """Detectron2's test loader with :class:`CTDatasetMapper` (errors name the image file
        and the dataset)."""
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CTDatasetMapper(cfg, False, (dataset_name,)))

    def __init__(self, cfg):
        check_training_config(cfg)
        super().__init__(cfg)  # calls build_hooks, which installs the AtomicCheckpointer

    def _use_atomic_checkpointer(self) -> None:
        """Replace the ``DetectionCheckpointer`` that ``DefaultTrainer.__init__`` creates (in
        place writes: a kill can truncate ``model_final.pth``) by an :class:`AtomicCheckpointer`
        with the same model, folder and checkpointables. Done in :meth:`build_hooks`, which
        ``DefaultTrainer.__init__`` calls right after creating it, because the
        ``PeriodicCheckpointer`` hook keeps a reference to the checkpointer."""
        if not isinstance(self.checkpointer, AtomicCheckpointer):
            self.checkpointer = AtomicCheckpointer.from_checkpointer(self.checkpointer)

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's ``resume_or_load`` through :class:`AtomicCheckpointer`: with ``resume``,
        continue from the newest complete checkpoint in ``OUTPUT_DIR`` (a corrupt one is
        skipped with a warning), else load ``MODEL.WEIGHTS`` and start at iteration 0."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.resumed_from is not None:
            # the checkpoint stores the iteration that had finished: start at the next one
            self.start_iter = self.iter + 1

    def build_hooks(self):
        """Detectron2's hooks, plus :class:`CopyClsBranchesHook` (one-shot models) placed
        *before* PreciseBN, the checkpointer and the evaluation (the step's losses are in the
        event storage once ``run_step`` returns): a copy at the last iteration is then in the
        precise BN statistics, in ``model_final.pth`` and in the evaluated model; and
        :class:`ImageLossStartHook` when ``MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER > 0``, and
        :class:`TemperatureCalibrationHook` with ``TEST.CLASSIFICATION.CALIBRATION_DATASET``
        (after precise BN, before the final checkpoint and evaluation). Checkpoints are saved by
        an :class:`AtomicCheckpointer`."""
        self._use_atomic_checkpointer()
        ret = super().build_hooks()
        model = unwrap_model(self.model)
        roi_heads = getattr(model, "roi_heads", None)
        copy_cfg = self.cfg.MODEL.ONESHOT.COPY
        if isinstance(roi_heads, OneShotROIHeads) and copy_cfg.ENABLED:
            hook = CopyClsBranchesHook(copy_cfg.MODE, copy_cfg.PERIOD, copy_cfg.SMOOTHING_WINDOW)
            later = (hooks.PreciseBN, hooks.PeriodicCheckpointer, hooks.EvalHook,
                     hooks.PeriodicWriter)
            first_later = [i for i, h in enumerate(ret) if isinstance(h, later)]
            ret.insert(first_later[0] if first_later else len(ret), hook)
        start = self.cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER
        if start > 0 and hasattr(model, "image_loss_enabled"):
            ret.insert(0, ImageLossStartHook(start))
        calibration_set = self.cfg.TEST.CLASSIFICATION.CALIBRATION_DATASET
        if calibration_set:  # after precise BN; before the final checkpoint and evaluation
            later = [i for i, h in enumerate(ret)
                     if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))]
            ret.insert(later[0] if later else len(ret), TemperatureCalibrationHook(
                self.cfg, calibration_set, self.cfg.OUTPUT_DIR))
        return ret

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    def train(self):
        """Train, check ``TEST.EXPECTED_RESULTS`` (:func:`verify_results`, which reads
        ``"<dataset>/<task>"`` paths, unlike Detectron2's), and return the last evaluation's
        results (``{}`` when none ran)."""
        TrainerBase.train(self, self.start_iter, self.max_iter)  # not DefaultTrainer's verify
        results = getattr(self, "_last_eval_results", None) or {}
        if comm.is_main_process():
            verify_results(self.cfg, results)
        return results
