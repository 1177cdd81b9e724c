"""Predefined dataset names registered at import without touching the disk, as Detectron2's
``builtin.py`` does. Each name gets a loader that finds its files when the dataset is loaded and
a probe that says, at run time, why it cannot be loaded yet; the file fields of its metadata
(``json_file``, ``image_root``, ...) are set on its one ``Metadata`` object at the first load, so
an evaluator built before that load sees them too. A user's own registration under a predefined
name replaces the predefined one (:func:`release`)."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...errors import DatasetError

__all__ = ["datasets_root", "register_lazily", "is_lazy", "release", "not_prepared",
           "set_file_fields"]

_PROBES: Dict[str, Callable[[], Optional[str]]] = {}


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` or ``datasets`` (read at each call)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_lazily(name: str, loader: Callable[[], List[Dict]],
                    probe: Callable[[], Optional[str]], **metadata: Any) -> None:
    """Register ``name`` with ``loader`` (called by ``DatasetCatalog.get``) and the static
    ``metadata`` (classes, evaluator type); ``probe()`` returns why the dataset cannot be loaded
    now (a missing file and how to prepare it) or ``None``."""
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    _PROBES[name] = probe


def is_lazy(name: str) -> bool:
    """Whether ``name`` still has its predefined (lazy) registration."""
    return name in _PROBES


def release(name: str) -> bool:
    """Drop the predefined registration of ``name`` so that the caller can register its own
    under that name; ``False`` (nothing done) when ``name`` is not a predefined one."""
    if _PROBES.pop(name, None) is None:
        return False
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    return True


def not_prepared(name: str) -> Optional[str]:
    """Why the predefined dataset ``name`` cannot be loaded now, or ``None`` (also for a name
    that is not, or no longer, a predefined registration)."""
    probe = _PROBES.get(name)
    return None if probe is None else probe()


def set_file_fields(name: str, **fields: Any) -> None:
    """Set file fields on ``name``'s metadata at its load (the same object, not a new one).

    Raises:
        DatasetError: a field already holds another value (the files moved since the first
            load in this process, e.g. ``$DETECTRON2_DATASETS`` changed).
    """
    meta = MetadataCatalog.get(name)
    for key, value in fields.items():
        old = meta.get(key, None)
        if old is None:
            meta.set(**{key: value})
        elif old != value:
            raise DatasetError(f"dataset {name!r}: {key} is now {value!r} but was {old!r} when it "
                               "was first loaded in this process (its files moved, e.g. "
                               "$DETECTRON2_DATASETS changed); restart to load it from there")
