"""Finding the studies under the files / folders a user names (:func:`find_studies`), headers
only, each one a :class:`StudyRef` that its format's reader loads later."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

from ..errors import StudyError
from .readers import (
    READERS,
    ReadOptions,
    file_extension,
    natural_key,
    reader_for,
    safe_name,
    supported_text,
)
from .readers.base import one_line
from .study import Study

__all__ = ["StudyRef", "find_studies"]

logger = logging.getLogger(__name__)


@dataclass
class StudyRef:
    """A study found by :func:`find_studies`, not read yet.

    Attributes:
        name: unique, file-system-safe study name (the output folder name).
        source: the input path (file or folder) it was found under.
        kind: the reader's kind: ``"dicom"``, ``"nifti"`` or ``"image"``.
        files: the files that make the study (DICOM: the series' files; NIfTI: one file;
            images: the slices in natural name order).
        keep_identifiers: the reader keeps the patient's identifiers (:class:`ReadOptions`).
    """

    name: str
    source: str
    kind: str
    files: List[str] = field(default_factory=list)
    keep_identifiers: bool = False

    def load(self, png_hu_offset: Optional[float] = None) -> Study:
        """Read the study (pixels and geometry) with its format's reader.

        Args:
            png_hu_offset: 16-bit grey image slices hold HU + this offset (``None``: 1024).

        Raises:
            StudyError: an unreadable or unsupported input; one line naming the file and the
                problem.
        """
        reader = READERS.get(self.kind)
        if reader is None:
            raise StudyError(f"{self.source}: unknown study kind {self.kind!r}")
        return reader.load(self.files, name=self.name, source=self.source,
                           options=ReadOptions(png_hu_offset=png_hu_offset,
                                               keep_identifiers=self.keep_identifiers))


class _Names:
    """Unique study names within one :func:`find_studies` call (case-insensitive, so that
    output folders do not collide on macOS / Windows either): ``-2``, ``-3``... suffixes."""

    def __init__(self) -> None:
        # the run's own files in the output folder are no study names
        self.used: Set[str] = {"slices.csv", "studies.csv", "index.html"}

    def __call__(self, name: str) -> str:
        base = safe_name(name)
        out, n = base, 1
        while out.lower() in self.used:
            n += 1
            out = f"{base}-{n}"
        self.used.add(out.lower())
        return out


def _walk(folder: str) -> List[str]:
    """Files under ``folder`` (recursive, hidden entries skipped), sorted in natural order by
    folder then name."""
    out = []
    for root, dirs, files in os.walk(folder, onerror=None):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        for name in sorted(files, key=natural_key):
            if not name.startswith("."):
                out.append(os.path.join(root, name))
    return out


def find_studies(paths: Sequence[str], keep_identifiers: bool = False
                 ) -> Tuple[List[StudyRef], List[StudyError]]:
    """Every study under the given files / folders, in input order, without reading pixels.

    * a DICOM file, or a folder (tree) holding DICOM files: one study per SeriesInstanceUID
      (headers read with ``stop_before_pixels=True``; a folder mixing series gives several);
    * a NIfTI file: one study; a folder holding NIfTI files: one study per file;
    * an image file given directly: one study; a folder of image files: one study per folder
      (its slices in natural name order: ``img2`` before ``img10``).

    Within a folder, studies are listed by format in the registry's order (DICOM, NIfTI,
    images). Study names are unique within the call and file-system safe: DICOM
    ``series-<hash of its UIDs>``, NIfTI the file name without ``.nii`` / ``.nii.gz``, an image
    folder its name, a single image its stem; repeats get ``-2``, ``-3``... suffixes.

    Without ``keep_identifiers``, a study's source is the input's position (``input 2``: the
    second path given), not a path (folders and files are often named after the patient or a
    UID). With it, DICOM studies are named
    ``<PatientID>_<SeriesNumber or last 8 characters of SeriesInstanceUID>`` (the folder name
    without PatientID) and sourced by path, and their reader keeps the identifiers
    (:mod:`.readers.dicom`).

    Returns:
        ``(studies, errors)``: problems found here (missing path, empty folder, unsupported
        file given directly, unreadable DICOM header...) are returned as :class:`StudyError`
        entries, never raised, so that the other studies still run. Unsupported files met
        while walking a folder (e.g. ``DICOMDIR``, ``.txt``) are skipped with a warning.
    """
    names = _Names()
    studies: List[StudyRef] = []
    errors: List[StudyError] = []
    for k, path in enumerate(paths, 1):
        path = str(path)
        found = _Found(names, studies, ReadOptions(keep_identifiers=keep_identifiers),
                       f"input {k}")
        if os.path.isdir(path):
            _find_in_folder(path, found, errors)
        elif os.path.isfile(path):
            _find_file(path, found, errors)
        elif os.path.exists(path):
            errors.append(StudyError(f"{path}: not a regular file or folder"))
        else:
            errors.append(StudyError(f"{path}: no such file or folder"))
    return studies, errors


@dataclass
class _Found:
    """Where one input's studies go: the run's names and list, the reading options, and the
    input's position (``input k``), a study's source without the identifiers."""

    names: _Names
    studies: List[StudyRef]
    options: ReadOptions
    position: str

    def add(self, reader, files: Sequence[str], source: str, given_directly: bool,
            errors: List[StudyError]) -> None:
        keep = self.options.keep_identifiers
        for name, found_in, group in reader.group(files, source, given_directly, errors,
                                                  options=self.options):
            if not keep:  # paths often name the patient
                found_in = self.position
            self.studies.append(StudyRef(self.names(name), found_in, reader.kind, list(group),
                                         keep_identifiers=keep))


def _find_file(path: str, found: _Found, errors: List[StudyError]) -> None:
    reader = reader_for(path)
    if reader is None:
        errors.append(StudyError(f"{path}: unsupported file type "
                                 f"'{file_extension(path) or '(no extension)'}' and no DICM "
                                 f"preamble; supported: {supported_text()}"))
        return
    found.add(reader, [path], path, True, errors)


def _find_in_folder(folder: str, found: _Found, errors: List[StudyError]) -> None:
    try:
        files = _walk(folder)
    except OSError as e:  # pragma: no cover - os.walk swallows errors by default
        errors.append(StudyError(f"{folder}: cannot list the folder ({one_line(e)})"))
        return
    by_kind: Dict[str, List[str]] = OrderedDict((kind, []) for kind in READERS)
    for path in files:
        reader = reader_for(path)
        if reader is None:
            logger.warning("%s: skipped, not a supported input (%s)", path, supported_text())
        else:
            by_kind[reader.kind].append(path)
    n_studies, n_errors = len(found.studies), len(errors)
    for kind, kind_files in by_kind.items():
        if kind_files:
            found.add(READERS[kind], kind_files, folder, False, errors)
    if len(found.studies) == n_studies and len(errors) == n_errors:
        what = "empty folder" if not files else \
            f"no supported file among its {len(files)} file(s)"
        errors.append(StudyError(f"{folder}: {what}; expected {supported_text()}"))
