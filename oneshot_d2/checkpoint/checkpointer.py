"""``AtomicCheckpointer``: Detectron2's ``DetectionCheckpointer`` that cannot lose a good model.

Detectron2 v0.6 (fvcore) writes ``<name>.pth`` and ``last_checkpoint`` in place: a kill while
``model_final.pth`` is rewritten (e.g. extending a finished run with ``--resume
SOLVER.MAX_ITER ...``) truncates the only good model, ``last_checkpoint`` names it, and the next
resume dies with a bare ``EOFError`` / zip error. Here:

* :meth:`~AtomicCheckpointer.save` writes ``<name>.pth.tmp-<host>-<pid>-<random>`` in the same
  folder, flushes it to disk and renames it over ``<name>.pth``; ``last_checkpoint`` is written
  the same way and only after its file is complete, so it only ever names complete files.
* :meth:`~AtomicCheckpointer.resume_or_load` with ``resume=True`` reads the file named by
  ``last_checkpoint``; one whose write was cut short (empty, truncated) is reported with a
  WARNING naming it and the newest complete ``model_*.pth`` in the folder is used instead. A
  file unreadable for another reason, or a folder of checkpoints none of which is complete,
  raises :class:`CheckpointError` (resuming from an older state or retraining over them would
  hide it); evaluation (``fallback=False``) never steps past the named file.
* :attr:`~AtomicCheckpointer.missing_keys` lists the model parameters the last loaded file did
  not hold (left at their initial values): ``--eval-only`` refuses such a partial model.
* An explicitly given weights file that is missing or unreadable raises :class:`CheckpointError`
  naming the file and the problem (not torch's misleading ``weights_only`` message).
* Temporary files of a killed run (dead process) are removed when the checkpointer is created.
* ``pretrained://NAME`` weights (:mod:`oneshot_d2.modeling.backbone.pretrained`) are read from
  the installed file and renamed into the model's trunk by an explicit key map; a trunk tensor
  the file lacks is an error.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..errors import CheckpointError
from ..modeling.backbone.pretrained import is_pretrained_name, pretrained_state_dict
from ..modeling.meta_arch.ct_rcnn import TEMPERATURE_BUFFER
from ..utils.file_io import atomic_open, atomic_write_text
from ..utils.temp_names import clean_orphans, parse_sibling
from ..utils.testing import kill_point

__all__ = ["AtomicCheckpointer", "CheckpointError", "describe_unreadable_checkpoint",
           "is_incomplete_checkpoint"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2 = b"\x80\x02"  # torch's legacy (pre-1.6) serialisation starts with it


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def describe_unreadable_checkpoint(path: str, exc: BaseException) -> str:
    """A one-line message naming ``path`` and why ``torch.load`` failed on it: empty,
    truncated zip archive, not a PyTorch file, objects refused by ``weights_only``, or the
    error's first line."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"{path}: cannot read the checkpoint ({_first_line(e)})"
    if size == 0:
        return f"{path}: empty checkpoint file (0 bytes; an interrupted write?)"
    if head == _ZIP_MAGIC and not zipfile.is_zipfile(path):
        return (f"{path}: truncated or corrupt checkpoint ({size} bytes; the zip archive is "
                "incomplete, e.g. an interrupted write)")
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_PROTOCOL_2) \
            and not path.endswith(".pkl"):
        return f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    if "Weights only load failed" in str(exc):
        return (f"{path}: the checkpoint holds Python objects that torch.load(weights_only=True) "
                "refuses (oneshot_d2 checkpoints hold only tensors and plain values); if you "
                "trust the file, re-save its state_dict")
    if isinstance(exc, (EOFError, pickle.UnpicklingError)):
        return f"{path}: truncated or corrupt checkpoint ({_first_line(exc)})"
    return f"{path}: unreadable checkpoint ({_first_line(exc)})"


def is_incomplete_checkpoint(path: str, exc: BaseException) -> bool:
    """True when ``torch.load`` failed on ``path`` because its write was cut short: an empty
    file, a zip archive without its central directory (torch's format since 1.6), or a pickle
    that ends early; the failures that a resume may step past."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if size == 0 or (head == _ZIP_MAGIC and not zipfile.is_zipfile(path)):
        return True
    text = str(exc)
    return isinstance(exc, EOFError) or "central directory" in text or "truncated" in text


def _is_local(path: str) -> bool:
    return "://" not in path


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`~detectron2.checkpoint.DetectionCheckpointer` with atomic saves, a resume that
    falls back past corrupt files, and clear errors for unreadable weights (module docstring).

    Attributes:
        resumed_from: after :meth:`resume_or_load`, the checkpoint resumed from (all
            checkpointables loaded), or ``None`` when the weights were loaded instead.
        missing_keys: the model's parameter / buffer names that the last loaded file did not
            hold (empty before any load, and with ``MODEL.WEIGHTS`` empty).
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 **checkpointables: Any) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.resumed_from: Optional[str] = None
        self.missing_keys: List[str] = []
        self._preloaded: Optional[Tuple[str, Dict[str, Any]]] = None
        if self.save_dir and self.save_to_disk and _is_local(self.save_dir):
            clean_orphans(self.save_dir, bases=self._checkpoint_bases(), kinds=("tmp",))

    @classmethod
    def from_checkpointer(cls, other: DetectionCheckpointer) -> "AtomicCheckpointer":
        """The same model, folder and checkpointables as ``other``, saved atomically."""
        return cls(other.model, other.save_dir, save_to_disk=other.save_to_disk,
                   **other.checkpointables)

    def _checkpoint_bases(self) -> List[str]:
        """Names whose ``<name>.tmp-<host>-<pid>-*`` files in ``save_dir`` are this class's."""
        names = {LAST_CHECKPOINT}
        for entry in os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else ():
            parsed = parse_sibling(entry)
            if parsed and parsed[0].endswith(".pth"):
                names.add(parsed[0])
        return sorted(names)

    # ---------------------------------------------------------------------------------------
    # saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically (temporary file, fsync, rename), then
        point ``last_checkpoint`` at it (atomically too). Same arguments as fvcore's."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a folder")
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
            f.flush()
            kill_point("checkpoint-write")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically."""
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename)

    # ---------------------------------------------------------------------------------------
    # loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """fvcore's ``load``, raising :class:`CheckpointError` for a missing or unreadable
        local file instead of an assertion / torch error."""
        if path and _is_local(path) and not os.path.isfile(path):
            what = "a folder, not a checkpoint file" if os.path.isdir(path) else "not found"
            raise CheckpointError(f"{path}: checkpoint file {what}")
        self._loading = path
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:
            self._loading = ""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is not None and preloaded[0] == filename:
            return preloaded[1]
        try:
            data = super()._load_file(filename)
        except Exception as e:  # noqa: BLE001  any failure to read the file is reported as such
            raise CheckpointError(describe_unreadable_checkpoint(filename, e)) from e
        source = getattr(self, "_loading", "")
        if is_pretrained_name(source):  # ImageNet trunk weights: renamed into the model's trunk
            return {"model": pretrained_state_dict(source, data["model"], self.model),
                    "__author__": source}
        return data

    def _load_model(self, checkpoint: Dict[str, Any]):
        """fvcore's / Detectron2's ``_load_model``, remembering the model keys the checkpoint
        lacked (or held with another shape) in :attr:`missing_keys`."""
        try:
            incompatible = super()._load_model(checkpoint)
        except (ValueError, TypeError, AttributeError) as e:  # fvcore on a foreign torch file
            source = getattr(self, "_loading", "") or "the checkpoint"
            raise CheckpointError(
                f"{source}: not a Detectron2 / oneshot_d2 checkpoint (its 'model' entry is not "
                f"a state dict of tensors: {_first_line(e)}); convert it to {{'model': "
                "state_dict}") from e
        # checkpoints written before temperature scaling: T = 1, the uncalibrated softmax
        if incompatible is not None and TEMPERATURE_BUFFER in incompatible.missing_keys:
            incompatible.missing_keys.remove(TEMPERATURE_BUFFER)
        self.missing_keys = list(getattr(incompatible, "missing_keys", None) or [])
        self.missing_keys += [k for k, *_ in getattr(incompatible, "incorrect_shapes", None) or []]
        return incompatible

    def _named_by_last_checkpoint(self) -> Optional[str]:
        """The file ``last_checkpoint`` names; ``None`` (with a warning) when it is empty or
        names no file, or when there is no ``last_checkpoint``."""
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if not os.path.isfile(tag):
            return None
        try:
            with open(tag, encoding="utf-8") as f:
                name = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            logger.warning("%s: unreadable (%s); looking for another checkpoint", tag, e)
            return None
        path = os.path.join(self.save_dir, name)
        if not name or not os.path.isfile(path):
            logger.warning("%s: %s; looking for another checkpoint", tag,
                           "empty" if not name else f"names {path}, which does not exist")
            return None
        return path

    def resume_candidates(self) -> List[str]:
        """Checkpoints to resume from, in order: the file named by ``last_checkpoint``, then
        every other ``model_*.pth`` in ``save_dir``, newest first."""
        first = self._named_by_last_checkpoint()
        folder = self.save_dir
        others = [os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith("model_") and n.endswith(".pth")
                  and os.path.isfile(os.path.join(folder, n))] if os.path.isdir(folder) else []
        others.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
        return ([first] if first else []) + [p for p in others if p != first]

    def _read_first_complete(self, candidates: List[str], fallback: bool = True) -> Optional[str]:
        """The first candidate that reads completely (kept for :meth:`load`). A candidate whose
        write was cut short (:func:`is_incomplete_checkpoint`) is reported with a WARNING naming
        it and skipped when ``fallback``; any other failure (a file torch refuses, a read
        error, ...) raises: skipping it would resume from an older state, or retrain over it.

        Raises:
            CheckpointError: a candidate is unreadable for another reason than an interrupted
                write, or is incomplete and ``fallback`` is False.
        """
        for path in candidates:
            try:
                data = self._load_file(path)
            except CheckpointError as e:
                if not fallback or not is_incomplete_checkpoint(path, e.__cause__ or e):
                    raise
                logger.warning("%s; not resuming from it", e)
                continue
            self._preloaded = (path, data)
            return path
        return None

    def resume_or_load(self, path: str, *, resume: bool = True,
                       fallback: bool = True) -> Dict[str, Any]:
        """With ``resume``, load every checkpointable from the newest complete checkpoint in
        ``save_dir`` (:meth:`resume_candidates`; with ``fallback``, ones cut short by an
        interrupted write are skipped with a warning); when ``save_dir`` holds no checkpoint,
        or without ``resume``, load only the model from ``path`` (weights).

        Args:
            path: the weights (``MODEL.WEIGHTS``) used when there is nothing to resume from.
            resume: resume from ``save_dir``.
            fallback: skip incomplete checkpoints (training); ``False`` (evaluation) raises
                instead, so that a model other than the named one is never evaluated.

        Raises:
            CheckpointError: ``path`` is used and is missing or unreadable; a checkpoint in
                ``save_dir`` is unreadable for another reason than an interrupted write; or
                ``save_dir`` holds checkpoints and none of them is complete.
        """
        self.resumed_from = None
        if resume and self.save_dir:
            candidates = self.resume_candidates()
            found = self._read_first_complete(candidates, fallback=fallback)
            if found is not None:
                if candidates and found != candidates[0]:
                    logger.warning("resuming from %s, the newest complete checkpoint", found)
                self.resumed_from = found
                return self.load(found)
            if candidates:
                raise CheckpointError(
                    f"{self.save_dir}: no complete checkpoint to resume from ("
                    f"{', '.join(os.path.basename(c) for c in candidates)} were cut short); "
                    "move them away to start again, or resume from another OUTPUT_DIR")
            if os.path.isfile(os.path.join(self.save_dir, LAST_CHECKPOINT)):
                logger.warning("no checkpoint in %s to resume from; starting from the weights "
                               "%s", self.save_dir, path or "(none: random init)")
        return self.load(path, checkpointables=[])
