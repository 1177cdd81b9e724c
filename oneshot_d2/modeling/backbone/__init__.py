from .single_fpn import build_resnet_single_fpn_backbone

__all__ = ["build_resnet_single_fpn_backbone"]
