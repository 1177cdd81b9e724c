from .ct_rcnn import CTRCNN, PIXEL_NORMS, standardize_per_image
from .oneshot_rcnn import OneShotRCNN

__all__ = ["CTRCNN", "OneShotRCNN", "PIXEL_NORMS", "standardize_per_image"]
