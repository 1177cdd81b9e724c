from .ct_rcnn import (
    CTRCNN,
    PIXEL_NORMS,
    normalize_images,
    run_grouped_by_size,
    standardize_per_image,
)
from .image_classifier import CTImageClassifier, log_train_accuracy
from .oneshot_rcnn import INFERENCE_OUTPUTS, OneShotRCNN, image_cls_only, rescale_roi_boxes

__all__ = ["CTRCNN", "CTImageClassifier", "OneShotRCNN", "image_cls_only", "INFERENCE_OUTPUTS",
           "PIXEL_NORMS", "log_train_accuracy", "normalize_images", "run_grouped_by_size",
           "rescale_roi_boxes", "standardize_per_image"]
