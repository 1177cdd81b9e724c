from .oneshot_rcnn import OneShotRCNN

__all__ = ["OneShotRCNN"]
