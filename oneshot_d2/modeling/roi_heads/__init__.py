from .oneshot_roi_heads import OneShotROIHeads
from .roi_batch import RoIBatch, select_roi_batch

__all__ = ["OneShotROIHeads", "RoIBatch", "select_roi_batch"]
