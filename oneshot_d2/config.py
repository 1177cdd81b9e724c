"""``add_oneshot_config``: the configuration keys oneshot_d2 adds to Detectron2's ``get_cfg()``.

Call it on a fresh ``get_cfg()`` *before* ``merge_from_file`` so that typos in YAML files fail.
Defaults are the papers' values (Ter-Sarkisov 2021); where the original code did otherwise, the
comment says so and docs/model.md's "paper vs code" table lists the option.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import ConfigError, UsageError

__all__ = ["add_oneshot_config", "ConfigError", "load_config", "config_keys", "resolve_device",
           "CHOICES", "check_choices", "ROI_PADDING_MODES", "SIEVE_ORDERS", "LOSS_REDUCTIONS",
           "COPY_MODES", "EFFICIENTNET_NORMS", "OPTIMIZERS", "PIXEL_NORMS", "PATIENT_RULES",
           "NORMS"]

# The allowed values of the enumerated keys, declared once here (the defaults are set through
# _choice, which checks them);
# load_config checks them once (check_choices), the modules that use a value check it again for
# configs built without load_config.
ROI_PADDING_MODES = ("cyclic", "original")
SIEVE_ORDERS = ("paper", "code")
LOSS_REDUCTIONS = ("sum", "mean")
COPY_MODES = ("best", "previous", "period")
EFFICIENTNET_NORMS = ("FrozenBN", "BN", "SyncBN")
OPTIMIZERS = ("SGD", "Adam", "AdamW")
PIXEL_NORMS = ("per_image", "mean_std")
PATIENT_RULES = ("top_k_mean", "fraction")
# Detectron2's get_norm names ("" = none)
NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN")
# enumerated key -> its allowed values; add_oneshot_config sets each default through _choice
CHOICES: Dict[str, Tuple[str, ...]] = {
    "MODEL.ONESHOT.ROI_PADDING": ROI_PADDING_MODES,
    "MODEL.ONESHOT.IMAGE_HEAD.SIEVE_ORDER": SIEVE_ORDERS,
    "MODEL.ONESHOT.IMAGE_HEAD.NORM": NORMS,
    "MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION": LOSS_REDUCTIONS,
    "MODEL.ONESHOT.COPY.MODE": COPY_MODES,
    "MODEL.EFFICIENTNET.NORM": EFFICIENTNET_NORMS,
    "SOLVER.OPTIMIZER": OPTIMIZERS,
    "SOLVER.IMAGE_HEAD_OPTIMIZER": ("",) + OPTIMIZERS,
    "MODEL.PIXEL_NORM": PIXEL_NORMS,
    "PREDICT.PATIENT_RULE": PATIENT_RULES,
    "PREDICT.SPACING_MISMATCH": ("warn", "resample"),
}


def _parent(cfg: CN, key: str) -> Tuple[Optional[CN], str]:
    """(the node holding dotted ``key``, its last part); the node is None when a part is
    missing."""
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node.get(part) if isinstance(node, CN) else None
    return (node if isinstance(node, CN) else None), last


def _choice(cfg: CN, key: str, default: str) -> None:
    """Set the enumerated ``key`` to ``default``, one of its :data:`CHOICES`."""
    if default not in CHOICES[key]:
        raise AssertionError(f"{key}: default {default!r} is not one of {CHOICES[key]}")
    node, last = _parent(cfg, key)
    node[last] = default


def check_choices(cfg: CN, where: str = "") -> None:
    """Refuse a value of an enumerated key (:data:`CHOICES`) that is not one of its allowed
    values, naming the key, the value, the allowed values and the closest one.

    Raises:
        ConfigError: ``<where>: <KEY>: 'value' is not one of (...)``.
    """
    for key, allowed in CHOICES.items():
        node, last = _parent(cfg, key)
        if node is None or last not in node or node[last] in allowed:
            continue
        value = node[last]
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}{key}: {value!r} is not one of {allowed}{hint}")


def _add_oneshot_model_config(cfg: CN) -> None:
    """``MODEL.ONESHOT``: the one-shot model (classification branch, image head, weight copy)."""
    _C = cfg
    _C.MODEL.ONESHOT = CN()
    # Number of slice classes: 3 (COVID-19, common pneumonia, normal) for CNCB-NCOV / COVIDx-CT,
    # 2 for COVID vs non-COVID sets. Class names come from the classification dataset metadata.
    _C.MODEL.ONESHOT.NUM_IMAGE_CLASSES = 3
    # beta: RoIs per image fed to the image head (affinity paper 8, LSTM paper 16).
    _C.MODEL.ONESHOT.ROI_BATCH_SIZE = 8
    # Class-wise NMS IoU among the classification branch's candidate boxes (papers: 0.25).
    _C.MODEL.ONESHOT.CLS_NMS_THRESH = 0.25
    # Re-order the selected RoIs by distance of the box's top-left corner from the image origin
    # (LSTM paper 4.1 and its code); False keeps score order (affinity model).
    _C.MODEL.ONESHOT.ORDER_BY_DISTANCE = False
    # Filling the RoI batch when fewer than beta boxes survive NMS: "cyclic" repeats the kept boxes
    # in score order (deterministic; a whole-image box when none survive); "original" repeats
    # them in random-length runs like the original code (non-deterministic at inference).
    _choice(_C, "MODEL.ONESHOT.ROI_PADDING", "cyclic")
    # Not in the papers: the first RoI of every batch is the whole slice, the other beta - 1
    # are selected as above, so the image head sees the slice's context beside its lesion
    # candidates (for sets whose label is the study's and whose slices may show no lesion,
    # e.g. MosMed's CT-1). False: the papers' RoI batch.
    _C.MODEL.ONESHOT.WHOLE_IMAGE_ROI = False

    _C.MODEL.ONESHOT.IMAGE_HEAD = CN()
    # Registered name in oneshot_d2's IMAGE_HEAD_REGISTRY: "AffinityHead" or "LSTMAttentionHead".
    _C.MODEL.ONESHOT.IMAGE_HEAD.NAME = "AffinityHead"
    # Mask sieve: N independent down/up stages (paper); the original reused one block N^2 times.
    _C.MODEL.ONESHOT.IMAGE_HEAD.SIEVE_STAGES = 3
    # Stage order: "paper" Conv s2 -> BN -> ConvT s2 -> ReLU; "code" Conv -> BN -> ReLU -> ConvT.
    _choice(_C, "MODEL.ONESHOT.IMAGE_HEAD.SIEVE_ORDER", "paper")
    # Normalisation in the sieve and vectorisation (Detectron2 names): "BN" (papers), "GN", ""...
    # "BN" normalises over the RoIs of all classification images of a step; with several
    # processes it is synchronised across them (naiveSyncBN), so replicas stay identical.
    # BN needs >= 2 classification images per step (SOLVER.CLS_IMS_PER_BATCH): over one slice's
    # RoIs it removes the slice-level mean of every channel in training but not at inference
    # (running statistics); the trainer refuses that setting. "GN" normalises each RoI alone:
    # identical in training and inference at any batch size (the CNCB paper configs, batch 1).
    _choice(_C, "MODEL.ONESHOT.IMAGE_HEAD.NORM", "BN")
    # A: number of affinities (columns of the affinity matrix W1), papers test 32..512.
    _C.MODEL.ONESHOT.IMAGE_HEAD.NUM_AFFINITIES = 128
    # Std of the normal init of the affinity matrix and vector (original code: 1, unscaled).
    _C.MODEL.ONESHOT.IMAGE_HEAD.AFFINITY_INIT_STD = 1.0
    # LSTM hidden size (LSTM + attention model).
    _C.MODEL.ONESHOT.IMAGE_HEAD.LSTM_HIDDEN_DIM = 256
    # Width of the two fully connected layers before the logits.
    _C.MODEL.ONESHOT.IMAGE_HEAD.FC_DIM = 128
    # Per-class BCE on one-hot targets; reduction over classes: "sum" (paper eq. 7/10) or "mean"
    # (original code).
    _choice(_C, "MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION", "sum")
    # w in L = L_seg + w * L_img (papers: 1).
    _C.MODEL.ONESHOT.IMAGE_HEAD.LOSS_WEIGHT = 1.0
    # Factor on the image loss's gradient that reaches the backbone through the RoI features
    # (papers: 1, the backbone learns from both losses; 0: the image head learns on detached
    # features, the backbone from the segmentation loss only).
    _C.MODEL.ONESHOT.IMAGE_HEAD.BACKBONE_GRAD_SCALE = 1.0
    # First iteration with the image loss (papers: 0, both tasks from the start). Before it,
    # classification items are dropped from the batch (no forward, no loss): training from
    # scratch, the segmentation branch first learns lesions the RoI batch can then pick up.
    # Applied by the trainer (ImageLossStartHook).
    _C.MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER = 0

    _C.MODEL.ONESHOT.COPY = CN()
    # Copy the segmentation box/mask branches into the frozen classification branches.
    _C.MODEL.ONESHOT.COPY.ENABLED = True
    # "best": when the smoothed segmentation loss improves on the best so far (papers);
    # "previous": when it improves on the previous iteration (LSTM code); "period": every PERIOD.
    _choice(_C, "MODEL.ONESHOT.COPY.MODE", "best")
    _C.MODEL.ONESHOT.COPY.PERIOD = 100
    # Window (iterations) of the median used to smooth the summed segmentation loss; 1 = raw.
    _C.MODEL.ONESHOT.COPY.SMOOTHING_WINDOW = 20


def _add_image_classifier_config(cfg: CN) -> None:
    """``MODEL.IMAGE_CLASSIFIER``: the plain CNN baseline ``CTImageClassifier`` (backbone + global
    average pooling + linear; classes: ``MODEL.ONESHOT.NUM_IMAGE_CLASSES``)."""
    _C = cfg
    _C.MODEL.IMAGE_CLASSIFIER = CN()
    # Backbone outputs pooled (each over the image's own extent) and concatenated.
    _C.MODEL.IMAGE_CLASSIFIER.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Dropout before the linear layer (0 = none).
    _C.MODEL.IMAGE_CLASSIFIER.DROPOUT = 0.0


def _add_efficientnet_config(cfg: CN) -> None:
    """``MODEL.EFFICIENTNET``: the EfficientNet-Lite backbones
    (``build_efficientnet_lite[_fpn|_single_fpn]_backbone``); ``MODEL.BACKBONE.FREEZE_AT`` freezes
    its stem and first stages as for a ResNet."""
    _C = cfg
    _C.MODEL.EFFICIENTNET = CN()
    # "efficientnet-lite0" .. "efficientnet-lite4" (ImageNet weights: pretrained://NAME, lite0-2)
    _C.MODEL.EFFICIENTNET.NAME = "efficientnet-lite0"
    # Outputs, of "stage1" .. "stage5" (strides 2 .. 32); the FPN builders take
    # MODEL.FPN.IN_FEATURES instead.
    _C.MODEL.EFFICIENTNET.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    # "FrozenBN" (Detectron2's default for pretrained trunks), "BN" or "SyncBN".
    _choice(_C, "MODEL.EFFICIENTNET.NORM", "FrozenBN")
    # Stochastic depth of the blocks (timm's drop_path_rate; 0 = none).
    _C.MODEL.EFFICIENTNET.DROP_PATH_RATE = 0.0


def _add_data_config(cfg: CN) -> None:
    """Data keys beside their Detectron2 counterparts."""
    _C = cfg
    # Contrast-limited adaptive histogram equalisation of every slice (training, evaluation,
    # prediction), before the resize: one contrast for sets prepared differently (e.g.
    # COVID-19-CT-Seg's CLAHE-enhanced slices and MosMed's plain lung window). Off: the slices
    # as stored (papers).
    _C.INPUT.CLAHE = CN()
    _C.INPUT.CLAHE.ENABLED = False
    _C.INPUT.CLAHE.CLIP_LIMIT = 2.0
    _C.INPUT.CLAHE.TILE_GRID = 8   # tiles per side
    # Classification (slice-label) training datasets, paired with DATASETS.TRAIN each iteration.
    _C.DATASETS.TRAIN_CLS = ()
    # Draw classification training images class-balanced: an image of class c repeats
    # N_max / N_c times per epoch (Detectron2's RepeatFactorTrainingSampler); False: uniformly,
    # so the classes come in their dataset shares (papers).
    _C.DATALOADER.BALANCE_IMAGE_CLASSES = False
    # Classification images per iteration (all processes), beside SOLVER.IMS_PER_BATCH.
    _C.SOLVER.CLS_IMS_PER_BATCH = 2
    # "SGD" (Detectron2's default), "Adam" or "AdamW" (papers: Adam, lr 1e-5, weight decay 1e-3).
    _choice(_C, "SOLVER.OPTIMIZER", "SGD")
    _C.SOLVER.ADAM_BETAS = (0.9, 0.999)
    # Learning-rate factor of the image head's parameters (papers: 1, one rate for the whole
    # network). The schedule (warm-up, steps) scales both rates alike.
    _C.SOLVER.IMAGE_HEAD_LR_FACTOR = 1.0
    # Optimizer of the image head: "" = SOLVER.OPTIMIZER (papers: one Adam for everything);
    # "Adam" beside SOLVER.OPTIMIZER "SGD" trains the head with Adam, the detector with SGD.
    _choice(_C, "SOLVER.IMAGE_HEAD_OPTIMIZER", "")
    # Input normalisation of CTRCNN (plain Mask R-CNN baseline) and OneShotRCNN alike:
    # "per_image" z-scores every image per channel with its own mean / std (the papers' "global
    # mean / std" is per image); "mean_std" uses MODEL.PIXEL_MEAN / PIXEL_STD as Detectron2 does.
    _choice(_C, "MODEL.PIXEL_NORM", "per_image")
    _C.register_renamed_key(
        "INPUT.PER_IMAGE_STANDARDIZE", "MODEL.PIXEL_NORM",
        message="INPUT.PER_IMAGE_STANDARDIZE True/False is now MODEL.PIXEL_NORM "
                "'per_image'/'mean_std', used by both CTRCNN and OneShotRCNN")


def _add_evaluation_config(cfg: CN) -> CN:
    """``TEST`` keys of oneshot_d2's evaluators."""
    _C = cfg
    # Papers' per-image mask AP beside COCO AP on segmentation test sets.
    _C.TEST.PER_IMAGE_AP = CN()
    _C.TEST.PER_IMAGE_AP.ENABLED = True
    # Detections below this score are ignored by the per-image AP (papers: 0.75).
    _C.TEST.PER_IMAGE_AP.SCORE_THRESH = 0.75
    _C.TEST.CLASSIFICATION = CN()
    # Class weights of the weighted F1, in class-id order; () = the evaluated split's class
    # shares (papers' definition). The original code hard-coded (0.45, 0.35, 0.20) for
    # (Normal, CP, COVID-19), about the CNCB test shares.
    _C.TEST.CLASSIFICATION.F1_WEIGHTS = ()
    # Two-class sets: a classification dataset (e.g. the training split, "mosmed_cls_train") on
    # which the threshold of the positive class's probability that maximises the balanced
    # accuracy is chosen; the other classification sets of DATASETS.TEST then also report their
    # metrics at it ("thresholded/..."). It is evaluated first (listed in DATASETS.TEST or not).
    # "" = no operating threshold (argmax metrics only).
    _C.TEST.CLASSIFICATION.THRESHOLD_DATASET = ""
    # A classification dataset (a validation split) on which the slice classifier's temperature
    # is fitted after the last training iteration (Guo et al. 2017: softmax(logits / T), T
    # minimising the NLL); saved with the weights (model_final.pth) and used by the final
    # evaluation, --eval-only and predict. "" = no calibration (T = 1).
    _C.TEST.CLASSIFICATION.CALIBRATION_DATASET = ""


def _add_predict_config(cfg: CN) -> CN:
    """``INPUT.HU_WINDOW`` and ``PREDICT``: running a trained model on CT studies
    (``oneshot_d2.inference``, ``tools/predict.py``)."""
    _C = cfg
    # (width, level) in HU of the window that made the training slices 8-bit: Hounsfield-unit
    # inputs (DICOM, NIfTI, 16-bit PNG) are windowed with it before the model sees them. The
    # phantom uses the lung window W1500 / L-600 (prepare_phantom); 8-bit inputs are taken as
    # already windowed.
    _C.INPUT.HU_WINDOW = (1500.0, -600.0)
    _C.PREDICT = CN()
    # Lesions counted in the reports, burden and label volumes: detections scoring at least this
    # (the evaluators use every detection; the papers' per-image AP uses 0.75).
    _C.PREDICT.LESION_SCORE_THRESH = 0.5
    # Patient-level result of a study from its slices' class probabilities:
    # "top_k_mean": each class scores the mean of its k highest slice probabilities (k =
    #   PATIENT_TOP_K, at most the number of slices); the study is the highest-scoring
    #   non-negative class when that score reaches PATIENT_THRESH, else the negative class.
    #   Default: lesions of COVID-19 are often in a few slices only, so a mean over all slices
    #   hides them, while the top-k mean needs k slices to agree rather than one (max).
    # "fraction": each class scores the fraction of slices predicted as it; the study is the
    #   highest non-negative class when that fraction reaches PATIENT_MIN_FRACTION.
    _choice(_C, "PREDICT.PATIENT_RULE", "top_k_mean")
    _C.PREDICT.PATIENT_TOP_K = 5
    # k in mm of scan instead of slices when > 0 and the slice spacing is known: k = this /
    # slice spacing, rounded, at least 1 (thin- and thick-slice series of one patient then
    # average over the same length of lung). 0 (default): k = PATIENT_TOP_K slices, as before.
    _C.PREDICT.PATIENT_TOP_K_MM = 0.0
    _C.PREDICT.PATIENT_THRESH = 0.5
    _C.PREDICT.PATIENT_MIN_FRACTION = 0.1
    # The scale the model was trained at, recorded with it: the training slices' field of view
    # in mm (the phantom's 350; 0 = unknown: no check). A study whose mm per model pixel differs
    # from the training's (this / INPUT.MIN_SIZE_TEST) by more than the factor
    # SPACING_TOLERANCE is, with SPACING_MISMATCH "resample" (default), cropped around the
    # centre or padded with air to the training's field of view before the model's resize, the
    # outputs put back on the study's pixels; with "warn", predicted as it is with a warning.
    # Why resample: the demo model on phantom patients padded to 525 mm called all three CP
    # instead of COVID-19 and overestimated their lesions 2.3x; resampled, it gave the native
    # results exactly (docs/predict.md, "Scale").
    _C.PREDICT.TRAINED_FIELD_OF_VIEW_MM = 0.0
    _C.PREDICT.SPACING_TOLERANCE = 1.25
    _choice(_C, "PREDICT.SPACING_MISMATCH", "resample")
    # Name of the negative ("no disease") slice class; "" = the class named like normal /
    # non-COVID / negative / healthy, if any (else the patient result is the top-scoring class).
    _C.PREDICT.NEGATIVE_CLASS = ""
    # Classical lung mask for the lesion burden (HU inputs only): voxels below this HU, minus
    # the air outside the body, largest components kept, holes filled slice by slice.
    _C.PREDICT.LUNG_HU_THRESH = -320.0
    # The predictor's model in channels-last memory format (torch backend): the same outputs
    # within float rounding, 1.4x faster on a 2-core CPU (docs/benchmarks.md, study rows).
    _C.PREDICT.CHANNELS_LAST = True
    return cfg


def add_oneshot_config(cfg: CN) -> CN:
    """Add oneshot_d2's keys to a Detectron2 config, in place.

    Args:
        cfg: a config from ``detectron2.config.get_cfg()``.

    Returns:
        The same ``cfg`` (for chaining).
    """
    _add_oneshot_model_config(cfg)
    _add_image_classifier_config(cfg)
    _add_efficientnet_config(cfg)
    _add_data_config(cfg)
    _add_evaluation_config(cfg)
    _add_predict_config(cfg)
    return cfg


def config_keys(cfg: CN, prefix: str = "") -> List[str]:
    """Every leaf key of ``cfg``, dotted (``"SOLVER.MAX_ITER"``)."""
    keys = []
    for name, value in cfg.items():
        if isinstance(value, CN):
            keys += config_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _closest_key(key: str, cfg: CN) -> str:
    """`` (did you mean 'X'?)`` for the closest existing key, or ``""``."""
    close = difflib.get_close_matches(key, config_keys(cfg), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(r"Type mismatch \((.+?) vs\. (.+?)\) with values \((.*) vs\. (.*)\) "
                            r"for config key: (\S+)", re.S)


def _type_name(type_repr: str) -> str:
    """``"<class 'int'>"`` -> ``"int"``."""
    m = re.fullmatch(r"<class '([\w.]+)'>", type_repr.strip())
    return m.group(1) if m else type_repr


def _describe_merge_error(e: Exception, cfg: CN) -> str:
    """yacs' / fvcore's message made readable: unknown key (closest key suggested), wrong value
    type; other messages unchanged."""
    message = str(e.args[0]) if e.args else str(e)
    unknown = _UNKNOWN_KEY.search(message)
    if unknown:
        key = unknown.group(1)
        return f"unknown config key {key!r}{_closest_key(key, cfg)}"
    mismatch = _TYPE_MISMATCH.search(message)
    if mismatch:
        expected, got, default, value, key = mismatch.groups()
        if "\n" in default or _type_name(expected).endswith("CfgNode"):
            return (f"{key}: is a section of keys (e.g. {key}.<KEY>: ...), not a value; got "
                    f"{' '.join(value.split())!r}")
        if "\n" in value or _type_name(got).endswith("CfgNode"):
            return f"{key}: expects a value of type {_type_name(expected)}, got a section of keys"
        return (f"{key}: value {value!r} is of type {_type_name(got)}, expected "
                f"{_type_name(expected)} (currently {default})")
    return message


def _yaml_error(e: yaml.YAMLError, config_file: str) -> str:
    """``file:line:column: YAML syntax error: problem`` (the file may be a ``_BASE_``)."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return f"{config_file}: YAML error: {e}"
    name = mark.name if mark.name and not mark.name.startswith("<") else config_file
    problem = getattr(e, "problem", None) or str(e)
    return f"{name}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {problem}"


def _merge_file(cfg: CN, config_file: str) -> None:
    """``cfg.merge_from_file`` with every failure as a :class:`ConfigError` naming the file."""
    if not os.path.isfile(config_file):
        raise ConfigError(f"{config_file}: config file not found")
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(e, config_file)) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{config_file}: not UTF-8 text (byte {e.start}: {e.reason}); save "
                          "the config as UTF-8") from e
    except FileNotFoundError as e:  # a _BASE_ file
        raise ConfigError(f"{e.filename}: config file not found (a _BASE_ of "
                          f"{config_file})") from e
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"{config_file}: {_describe_merge_error(e, cfg)}") from e
    except (TypeError, AttributeError) as e:  # an empty file or not a mapping
        raise ConfigError(f"{config_file}: not a YAML mapping of config keys ({e})") from e


def _merge_list(cfg: CN, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list`` with failures as a :class:`ConfigError` ("command line")."""
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"command line: {_describe_merge_error(e, cfg)}") from e


def load_config(config_file: str, opts: Sequence[str] = (), cfg: Optional[CN] = None) -> CN:
    """Detectron2's ``get_cfg()`` + :func:`add_oneshot_config` + ``config_file`` + ``opts``
    (``KEY VALUE`` pairs), not frozen.

    Raises:
        ConfigError: the file is missing, not YAML (file and line named), or sets an unknown key
            (the closest key is suggested), a value of the wrong type or an enumerated key
            (:data:`CHOICES`) to a value it does not allow; the same for ``opts``.
    """
    if cfg is None:
        cfg = add_oneshot_config(get_cfg())
    _merge_file(cfg, config_file)
    check_choices(cfg, config_file)
    _merge_list(cfg, opts)
    check_choices(cfg, "command line")
    return cfg


def resolve_device(cfg: CN, requested: str = "") -> str:
    """The tools' one CUDA policy; sets and returns ``cfg.MODEL.DEVICE``.

    A device the user asks for by name (a tool's ``--device``) must exist here: a CUDA device
    without a GPU is refused. A CUDA ``MODEL.DEVICE`` that comes from the config (the paper
    configs keep Detectron2's ``"cuda"``) falls back to the CPU with a warning when no GPU is
    present, in training, evaluation and prediction alike.

    Raises:
        UsageError: ``requested`` is a CUDA device and no GPU is available.
    """
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {requested!r}: no CUDA GPU is available here "
                             "(use --device cpu)")
        cfg.MODEL.DEVICE = requested
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("oneshot_d2").warning(
            "MODEL.DEVICE %r: CUDA is not available, running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    return cfg.MODEL.DEVICE
