"""What a study's result depends on, as digests: the ``fingerprint`` of ``report.json``.

A study's outputs are a function of its input files' content, the model's weights, the config it
ran with, the output options and this package's version. ``tools/predict.py --skip-existing``
keeps a study folder whose recorded fingerprint equals the one of the new run and recomputes
the study on any difference (docs/predict.md, "Cohort runs").
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Sequence

from detectron2.config import CfgNode

from ..version import __version__

__all__ = ["file_sha256", "files_sha256", "run_fingerprint", "study_fingerprint"]

_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: Sequence[str]) -> str:
    """SHA-256 of the files' names and contents in the given order (a file's name can be an
    output: the slice labels of image folders and, with ``--keep-identifiers``, of DICOM
    series; its folder does not count)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.basename(path).encode("utf-8", "surrogateescape") + b"\0")
        h.update(bytes.fromhex(file_sha256(path)))
    return h.hexdigest()


def _weights_sha256(weights: str) -> str:
    """The weights file's SHA-256; for a name that is no local file (a model-zoo URL, or ""),
    the SHA-256 of the name itself."""
    from detectron2.utils.file_io import PathManager

    local = ""
    if weights:
        try:
            local = PathManager.get_local_path(weights)
        except Exception:  # noqa: BLE001  (an unreachable URL: the name stands for it)
            local = ""
    if local and os.path.isfile(local):
        return file_sha256(local)
    return hashlib.sha256(str(weights).encode("utf-8")).hexdigest()


def run_fingerprint(cfg: CfgNode, options: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a study's fingerprint that is the same for every study of a run.

    Args:
        cfg: the config the model runs with (its ``MODEL.WEIGHTS`` file is hashed; the path
            itself does not count, so moving the weights recomputes nothing).
        options: the command's options that change the outputs (JSON values).
    """
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.WEIGHTS = ""
    return {
        "version": __version__,
        "weights_sha256": _weights_sha256(cfg.MODEL.WEIGHTS),
        "config_sha256": hashlib.sha256(plain.dump().encode("utf-8")).hexdigest(),
        "options": dict(options),
    }


def study_fingerprint(run: Dict[str, Any], files: Sequence[str], name: str,
                      source: str) -> Dict[str, Any]:
    """A study's fingerprint: the run's plus ``input_sha256`` of the study's files and the
    study's name and source as written in its outputs."""
    return {"input_sha256": files_sha256(files), "study": name, "source": source, **run}
