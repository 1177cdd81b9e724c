from .classification_evaluation import ClassificationEvaluator, confusion_matrix

__all__ = ["ClassificationEvaluator", "confusion_matrix"]
