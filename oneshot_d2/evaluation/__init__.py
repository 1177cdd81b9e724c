from .classification_evaluation import ClassificationEvaluator
from .classification_metrics import classification_metrics, confusion_matrix
from .per_image_ap import image_ap, summarize_per_image_ap
from .per_image_ap_evaluation import PerImageAPEvaluator

__all__ = ["ClassificationEvaluator", "PerImageAPEvaluator", "classification_metrics",
           "confusion_matrix", "image_ap", "summarize_per_image_ap"]
