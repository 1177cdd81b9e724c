"""The interface every study reader implements, the registry of readers, and the naming helpers
they share.

A reader handles one input format: which files are its own (:attr:`StudyReader.extensions`,
then :meth:`StudyReader.sniff` for files whose extension says nothing), how they group into
studies (:meth:`StudyReader.group`, headers only) and how one study is read
(:meth:`StudyReader.load`). The registry keeps them in the order their studies are listed.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from ...errors import StudyError
from ..study import Study

__all__ = ["StudyReader", "StudyGroup", "ReadOptions", "READERS", "register_reader",
           "reader_for", "supported_text", "natural_key", "safe_name", "file_extension",
           "one_line"]


@dataclass
class ReadOptions:
    """Options of the readers that need one (the others ignore them).

    Attributes:
        png_hu_offset: 16-bit grey image slices hold HU + this offset (``None``: the image
            reader's default, :data:`~.images.PNG_HU_OFFSET`).
        keep_identifiers: keep what can identify a patient in the study's name, source, slice
            labels and metadata (DICOM: PatientID, the UIDs, SeriesDescription, file names;
            NIfTI: the header's description). Default: none of it (docs/predict.md).
    """

    png_hu_offset: Optional[float] = None
    keep_identifiers: bool = False


# (study name before de-duplication, source path, the study's files)
StudyGroup = Tuple[str, str, List[str]]


class StudyReader:
    """One input format. Subclasses set :attr:`kind`, :attr:`extensions`, :attr:`description`
    and implement :meth:`group` and :meth:`load`."""

    #: the study kind this reader produces (``Study.kind``)
    kind: str = ""
    #: lower-case file extensions that are this format (``.nii.gz`` counts as one)
    extensions: Tuple[str, ...] = ()
    #: how the format is named in error messages
    description: str = ""

    def sniff(self, path: str) -> bool:
        """Whether a file whose extension belongs to no reader is this format (its content)."""
        return False

    def group(self, files: Sequence[str], source: str, given_directly: bool,
              errors: List[StudyError],
              options: Optional[ReadOptions] = None) -> List[StudyGroup]:
        """Group this format's files found under ``source`` into studies without reading
        pixels; problems are appended to ``errors`` (never raised).

        Args:
            files: the files of this format, in natural order.
            source: the input path (file or folder) they were found under.
            given_directly: ``source`` is one file named by the user (not met in a folder).
            options: the reading options (``None``: the defaults).
        """
        raise NotImplementedError

    def load(self, files: Sequence[str], name: Optional[str] = None,
             source: Optional[str] = None, options: Optional[ReadOptions] = None) -> Study:
        """Read one study (pixels and geometry).

        Raises:
            StudyError: one line naming the file and the problem.
        """
        raise NotImplementedError


READERS: "OrderedDict[str, StudyReader]" = OrderedDict()


def register_reader(reader: StudyReader) -> StudyReader:
    """Add a reader (its :attr:`~StudyReader.kind` must be new); returns it."""
    if not reader.kind or reader.kind in READERS:
        raise ValueError(f"reader kind {reader.kind!r} empty or already registered")
    READERS[reader.kind] = reader
    return reader


def reader_for(path: str) -> Optional[StudyReader]:
    """The reader of a file: the one claiming its extension, else the first that recognises
    its content, else ``None`` (unsupported)."""
    ext = file_extension(path)
    for reader in READERS.values():
        if ext in reader.extensions:
            return reader
    for reader in READERS.values():
        if reader.sniff(path):
            return reader
    return None


def supported_text() -> str:
    """The supported formats, for error messages."""
    return ", ".join(r.description for r in READERS.values())


def natural_key(name: str) -> Tuple[Any, ...]:
    """Sort key in natural order: ``img2`` before ``img10`` (case-insensitive)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


def safe_name(name: str, fallback: str = "study") -> str:
    """A file-system-safe name: characters other than ``[A-Za-z0-9._-]`` become ``_``; no
    leading dot; ``fallback`` when nothing is left."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(name).strip()).lstrip(".")
    return safe or fallback


def file_extension(path: str) -> str:
    """Lower-case extension, ``.nii.gz`` as one."""
    low = os.path.basename(path).lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(low)[1]


def one_line(e: BaseException) -> str:
    """An exception as one line: ``Class: message``."""
    text = " ".join(str(e).split())
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__
