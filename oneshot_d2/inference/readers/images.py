"""Image reader: ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff`` slices. 8-bit slices
(grey, RGB, RGBA, palette: converted to grey) are taken as already windowed; 16-bit grey slices
hold HU + :data:`PNG_HU_OFFSET` (the phantom's ``hu/`` PNGs). A file given directly is a
one-slice study, a folder of images one study (slices in natural name order)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ...data.io import WIDE_MODES, open_image, strict_decoding
from ...errors import DatasetError, StudyError
from ..study import Study
from .base import ReadOptions, StudyGroup, StudyReader, natural_key, one_line, safe_name

__all__ = ["ImageReader", "IMAGE_EXTENSIONS", "PNG_HU_OFFSET", "load_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# 16-bit grey slices store HU + 1024 (the CT rescale intercept; the phantom's hu/ PNGs).
PNG_HU_OFFSET = 1024


def _read_wide(path: str, offset: float) -> np.ndarray:
    """A 16-bit grey slice (PIL mode I;16* / I) as HU = value - offset, float32."""
    from PIL import Image

    try:
        with strict_decoding(), Image.open(path) as im:
            mode = im.mode
            im.load()
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise StudyError(f"{path}: unreadable 16-bit image, truncated or corrupt "
                         f"({one_line(e)})") from None
    if mode == "F" or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise StudyError(f"{path}: unsupported image (PIL mode {mode}, {arr.dtype}); 8-bit "
                         "slices or 16-bit grey slices holding HU + "
                         f"{offset:g} expected")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise StudyError(f"{path}: 32-bit image with values {int(arr.min())}..{int(arr.max())}"
                         f"; 16-bit grey slices holding HU + {offset:g} expected")
    return (arr.astype(np.float64) - offset).astype(np.float32)


def _image_mode(path: str) -> str:
    """PIL mode from the header; raises StudyError for a missing / empty / unreadable file."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise StudyError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise StudyError(f"{path}: empty image file (0 bytes)")
    try:
        with Image.open(path) as im:
            return im.mode
    except UnidentifiedImageError:
        raise StudyError(f"{path}: unreadable image (not a decodable "
                         f"{'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise StudyError(f"{path}: unreadable image ({one_line(e)})") from None


def load_images(files: Sequence[str], name: Optional[str] = None, source: Optional[str] = None,
                png_hu_offset: float = PNG_HU_OFFSET) -> Study:
    """Read image slices (in the given order) as a :class:`Study`: 8-bit slices (grey, RGB,
    RGBA, palette -> grey) as already-windowed uint8 (``is_hu`` False); 16-bit grey slices as
    HU = value - ``png_hu_offset`` (float32, ``is_hu`` True). No geometry: ``spacing`` and
    ``positions`` are ``None``, ``affine`` the identity.

    Raises:
        StudyError: missing, empty, truncated or undecodable file; slices of different sizes;
            8-bit and 16-bit slices mixed.
    """
    files = list(files)
    if not files:
        raise StudyError(f"{source or name or '?'}: no image file")
    slices, wide_of = [], []
    for path in files:
        wide = _image_mode(path) in WIDE_MODES
        if wide_of and wide != wide_of[0][1]:
            eight, sixteen = (wide_of[0][0], path) if wide else (path, wide_of[0][0])
            raise StudyError(f"{path}: 8-bit and 16-bit slices mixed in one study ({eight} is "
                             f"8-bit, {sixteen} 16-bit); one kind per folder expected")
        wide_of.append((path, wide))
        if wide:
            slices.append(_read_wide(path, png_hu_offset))
        else:
            try:
                slices.append(np.asarray(open_image(path).convert("L"), dtype=np.uint8))
            except StudyError:
                raise
            except DatasetError as e:
                raise StudyError(str(e)) from None
        if slices[-1].shape != slices[0].shape:
            (h1, w1), (h2, w2) = slices[0].shape, slices[-1].shape
            raise StudyError(f"{path}: slice size {h2}x{w2} (rows x columns) differs from "
                             f"{files[0]} ({h1}x{w1}); one study must have one slice size")
    is_hu = wide_of[0][1]
    pixels = np.stack(slices, axis=0)
    meta: Dict[str, Any] = {"shape": [int(v) for v in pixels.shape], "bits": 16 if is_hu else 8}
    if is_hu:
        meta["hu_offset"] = float(png_hu_offset)
    if name is None:
        base = files[0] if len(files) == 1 else os.path.dirname(os.path.abspath(files[0]))
        name = safe_name(os.path.splitext(os.path.basename(base))[0] if len(files) == 1
                         else os.path.basename(base))
    return Study(name=name, source=source or (files[0] if len(files) == 1 else
                                              os.path.dirname(files[0])),
                 kind="image", pixels=pixels.astype(np.float32) if is_hu else pixels,
                 is_hu=is_hu, spacing=None, positions=None,
                 slice_labels=[os.path.basename(p) for p in files], affine=np.eye(4),
                 meta=meta)


class ImageReader(StudyReader):
    """Image slices: a file given directly is a one-slice study named after its stem; in a
    folder (tree), the images of each folder make one study named after the folder, slices in
    natural name order (``img2`` before ``img10``)."""

    kind = "image"
    extensions = IMAGE_EXTENSIONS
    description = "images (" + ", ".join(IMAGE_EXTENSIONS) + ")"

    def group(self, files: Sequence[str], source: str, given_directly: bool,
              errors: List[StudyError],
              options: Optional[ReadOptions] = None) -> List[StudyGroup]:
        if given_directly:
            return [(os.path.splitext(os.path.basename(p))[0], p, [p]) for p in files]
        by_folder: Dict[str, List[str]] = {}
        for path in files:
            by_folder.setdefault(os.path.dirname(path), []).append(path)
        return [(os.path.basename(os.path.abspath(sub)), sub, sorted(paths, key=natural_key))
                for sub, paths in by_folder.items()]

    def load(self, files: Sequence[str], name: Optional[str] = None,
             source: Optional[str] = None, options: Optional[ReadOptions] = None) -> Study:
        offset = options.png_hu_offset if options is not None else None
        return load_images(files, name=name, source=source,
                           png_hu_offset=PNG_HU_OFFSET if offset is None else offset)
