"""``CTDatasetMapper``: Detectron2's ``DatasetMapper`` whose errors name the image file and the
dataset (a missing, empty, truncated or 16-bit slice, or one whose size differs from its
annotation), instead of a bare PIL / Detectron2 traceback in the middle of training or
evaluation."""
from __future__ import annotations

import logging
from typing import Dict, Sequence

from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError

from ..errors import DatasetError
from .io import open_image, strict_decoding
from .transforms import input_transforms

__all__ = ["CTDatasetMapper"]

logger = logging.getLogger(__name__)


class CTDatasetMapper(DatasetMapper):
    """``DatasetMapper(cfg, is_train)`` plus checked image reads, and the project's input
    transforms (:func:`~oneshot_d2.data.transforms.input_transforms`, e.g. ``INPUT.CLAHE``)
    before Detectron2's augmentations.

    Each image is first checked by :func:`oneshot_d2.data.io.open_image` (header only: present,
    not empty, 8-bit), then decoded by Detectron2 with PIL, the reader of the converters and of
    the dataset checker; any failure raises :class:`DatasetError` naming the file and the
    dataset(s).

    Args:
        cfg: the config (as for ``DatasetMapper``).
        is_train: training (augmentations, annotations kept) or inference.
        dataset_names: the datasets this mapper serves, named in errors.
    """

    def __init__(self, cfg, is_train: bool = True, dataset_names: Sequence[str] = ()):
        super().__init__(cfg, is_train)
        self.augmentations = T.AugmentationList(input_transforms(cfg)
                                                + list(self.augmentations.augs))
        self.dataset_names = tuple(dataset_names)

    def _where(self) -> str:
        names = ", ".join(self.dataset_names) or "unnamed"
        return f"dataset{'s' if len(self.dataset_names) > 1 else ''} {names}"

    def __call__(self, dataset_dict: Dict) -> Dict:
        path = dataset_dict.get("file_name", "?")
        try:
            width, height = open_image(path, decode=False).size
            with strict_decoding():
                return super().__call__(dataset_dict)
        except DatasetError as e:
            raise DatasetError(f"{e} ({self._where()})") from e
        except SizeMismatchError:
            raise DatasetError(
                f"{path}: image is {width}x{height} (WxH) but its annotation records "
                f"{dataset_dict.get('width')}x{dataset_dict.get('height')} ({self._where()}); "
                "re-run the converter") from None
        except (OSError, SyntaxError) as e:  # PIL while decoding: truncated / corrupt data
            raise DatasetError(f"{path}: unreadable image, truncated or corrupt "
                               f"({e.__class__.__name__}: {e}) ({self._where()})") from e
