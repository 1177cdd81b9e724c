"""Small, checked readers of dataset files (images, label masks, CSV manifests, annotation
masks): the one place for each of these jobs. Atomic writers: :mod:`oneshot_d2.utils.file_io`."""
from __future__ import annotations

import contextlib
import csv
import logging
import os
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.structures import polygons_to_bitmask
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DatasetError

__all__ = ["open_image", "strict_decoding", "WIDE_MODES", "read_gray", "read_label_image",
           "read_manifest", "decode_mask"]


logger = logging.getLogger(__name__)

# PIL modes of more than 8 bits per channel (16-bit grey PNGs open as "I;16*" or "I").
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Decode with ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` off (a truncated file raises), even
    if another library switched it on for the process."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _png_bit_depth(path: str) -> int:
    """The bit depth per channel in a PNG's IHDR chunk (byte 24), 0 when unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
    except OSError:
        return 0
    return head[24] if len(head) == 25 and head[12:16] == b"IHDR" else 0


def _refuse_wide(im: Image.Image, path: str) -> None:
    """Raise for a slice of more than 8 bits per channel (e.g. HU + 1024 exported from DICOM):
    Detectron2's reader clips it to 255 and OpenCV scales it to 0..7, so its meaning depends on
    the reader; oneshot_d2 does not guess an HU window."""
    if im.format == "PNG" and im.mode not in WIDE_MODES and _png_bit_depth(path) == 16:
        # PIL opens 16-bit RGB(A) PNGs as 8-bit "RGB", keeping the high byte only
        raise DatasetError(
            f"{path}: 16-bit colour PNG (PIL would read it as 8-bit {im.mode}, keeping the high "
            "byte); slices must be 8-bit: window the HU values to 0..255 first (e.g. "
            "oneshot_d2.data.transforms.lung_window(hu): level -600, width 1500)")
    if im.mode in WIDE_MODES:
        im.load()
        lo, hi = im.getextrema()
        raise DatasetError(
            f"{path}: {'32-bit' if im.mode in ('I', 'F') else '16-bit'} image (PIL mode "
            f"{im.mode}, values {lo}..{hi}); slices must be 8-bit: window the HU values to "
            "0..255 first (e.g. oneshot_d2.data.transforms.lung_window(hu): level -600, width "
            "1500)")


def open_image(path: str, decode: bool = True) -> Image.Image:
    """Open an image slice with PIL, the library Detectron2's dataset mapper reads it with: the
    one checked reader of the converters, the dataset checker and the training / evaluation
    mapper (:class:`oneshot_d2.data.mapper.CTDatasetMapper`), so that they agree.

    Args:
        path: the image file.
        decode: decode every pixel (a truncated file fails here) and apply the EXIF orientation,
            as Detectron2 does; ``False`` reads the header only (mode and size; the mapper then
            decodes with Detectron2's reader).

    Raises:
        DatasetError: missing, empty, undecodable or truncated file, or more than 8 bits per
            channel (16-bit PNG); the message names the file.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise DatasetError(f"{path}: empty image file (0 bytes)")
    try:
        with strict_decoding(), Image.open(path) as im:
            _refuse_wide(im, path)
            if not decode:
                return im
            im.load()
            return ImageOps.exif_transpose(im)
    except DatasetError:
        raise
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: unreadable image (not a decodable PNG/JPEG)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated / corrupt data
        raise DatasetError(f"{path}: unreadable image, truncated or corrupt "
                           f"({e.__class__.__name__}: {e})") from e




def read_gray(path: str) -> np.ndarray:
    """Read an image slice as (H, W) uint8 grey levels through :func:`open_image` (fully
    decoded, EXIF-oriented, 8-bit; RGB / RGBA / palette images are converted to luminance).

    Raises:
        DatasetError: see :func:`open_image`.
    """
    return np.asarray(open_image(path).convert("L"))


def _read_palette_indices(path: str):
    """The index image of a palette ("P" mode) PNG, or ``None`` for any other image. OpenCV
    would expand the palette to colours; label masks store class ids as palette indices."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode != "P":
                return None
            return np.array(im, dtype=np.uint8)
    except (OSError, ValueError):
        return None  # let OpenCV report the unreadable file


def read_label_image(path: str) -> np.ndarray:
    """Read a label mask (H, W) without any colour conversion or rescaling (palette PNGs give
    their palette indices).

    Raises:
        DatasetError: missing, unreadable, or not a single-channel integer image.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: mask file not found")
    palette = _read_palette_indices(path)
    if palette is not None:
        return palette
    mask = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DatasetError(f"{path}: unreadable mask (not a decodable PNG)")
    if mask.ndim == 3:
        if not (np.all(mask[..., 0] == mask[..., 1]) and np.all(mask[..., 1] == mask[..., 2])):
            raise DatasetError(f"{path}: mask has colour channels that differ; expected a "
                               "single-channel label image")
        mask = mask[..., 0]
    if not np.issubdtype(mask.dtype, np.integer):
        raise DatasetError(f"{path}: mask dtype {mask.dtype} is not an integer label image")
    return mask


def _manifest_columns(csv_file: str, fieldnames: Optional[Sequence[str]],
                      required: Sequence[Union[str, Sequence[str]]], expected: str):
    """``[(name, present column)]`` copies for the alternatives of ``required``; raises for
    missing columns."""
    fields = set(fieldnames or ())
    missing, copies = set(), []
    for entry in required:
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        present = next((n for n in names if n in fields), None)
        if present is None:
            missing.add(names[0])
        elif present != names[0]:
            copies.append((names[0], present))
    if missing:
        raise DatasetError(f"{csv_file}: manifest lacks column(s) {sorted(missing)} "
                           f"(has {list(fieldnames or ())})"
                           + (f"; expected {expected}" if expected else ""))
    return copies


def _warn_duplicate_rows(csv_file: str, lines: Dict[tuple, List[int]]) -> None:
    """One warning per manifest naming the lines of rows that repeat an earlier row."""
    repeated = [ls for ls in lines.values() if len(ls) > 1]
    if repeated:
        shown = "; ".join("lines " + ", ".join(map(str, ls)) for ls in repeated[:3])
        logger.warning("%s: %d row(s) listed more than once (%s%s); each copy is used", csv_file,
                       sum(len(ls) - 1 for ls in repeated), shown,
                       "; ..." if len(repeated) > 3 else "")


def read_manifest(csv_file: str, required: Sequence[Union[str, Sequence[str]]] = (),
                  expected: str = "", allow_empty: bool = False,
                  nonempty: Sequence[str] = ()) -> List[Dict[str, str]]:
    """Rows of a CSV manifest as dicts, values stripped (a value missing from a short row: "").
    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"), LF or CRLF line ends; rows
    that repeat an earlier row are kept and reported in one warning.

    Args:
        csv_file: the manifest (first line: column names).
        required: columns that must be present. An entry that is a sequence of names accepts any
            of them: the first one present is copied, in every row, to the entry's first name
            (e.g. ``("file_name", "path")``: rows get ``file_name`` even from a ``path`` column).
        expected: a description of the expected columns, added to the missing-column message.
        allow_empty: return ``[]`` for a manifest without rows instead of raising.
        nonempty: columns (names after the copies above) whose cell must not be empty.

    Raises:
        DatasetError: missing file, not UTF-8, missing columns, an empty cell of a ``nonempty``
            column (file and line named), or no rows; the message names the file.
    """
    if not os.path.isfile(csv_file):
        raise DatasetError(f"{csv_file}: manifest not found")
    rows, lines = [], defaultdict(list)
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            copies = _manifest_columns(csv_file, reader.fieldnames, required, expected)
            for raw in reader:
                row = {k: (v or "").strip() for k, v in raw.items() if k is not None}
                for name, present in copies:
                    row[name] = row[present]
                empty = [c for c in nonempty if not row.get(c)]
                if empty:
                    raise DatasetError(f"{csv_file}:{reader.line_num}: empty {empty[0]!r} cell")
                lines[tuple(sorted(row.items()))].append(reader.line_num)
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{csv_file}: not UTF-8 text ({e.reason} at byte {e.start}); save "
                           "it as CSV UTF-8") from None
    _warn_duplicate_rows(csv_file, lines)
    if not rows and not allow_empty:
        raise DatasetError(f"{csv_file}: manifest has no rows")
    return rows


def decode_mask(seg: Any, height: int, width: int) -> Optional[np.ndarray]:
    """The (H, W) bool mask of an annotation's ``segmentation`` (Detectron2 / COCO formats:
    RLE dict, compressed or with a list of counts, or a list of polygons); ``None`` when there
    is no mask (missing, empty or of another type). Errors of a malformed mask propagate."""
    if isinstance(seg, dict):
        rle = dict(seg)
        if isinstance(rle.get("counts"), list):
            rle = mask_util.frPyObjects(rle, height, width)  # keeps the RLE's own "size"
        return mask_util.decode(rle).astype(bool)
    if isinstance(seg, list) and seg:
        return polygons_to_bitmask(seg, height, width)
    return None
