"""Predefined dataset names registered at import without touching the disk, as Detectron2's
``builtin.py`` does. Each name gets a loader that finds its files when the dataset is loaded and
a probe that says, at run time, why it cannot be loaded yet; the file fields of its metadata
(``json_file``, ``image_root``, ...) are set on its one ``Metadata`` object at the first load or
at :func:`resolve` (the trainer resolves its test sets before it builds their evaluators). A
user's own registration under a predefined name replaces the predefined one (:func:`release`)."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...errors import DatasetError
from .covid_ct import CT_CLS_EVALUATOR

__all__ = ["datasets_root", "register_lazily", "resolve", "is_lazy", "release", "not_prepared"]


class _Lazy:
    """How to find, check and load one predefined dataset."""

    def __init__(self, files: Callable[[], Dict[str, str]], load: Callable[[], List[Dict]],
                 probe: Callable[[], Optional[str]]):
        self.files, self.load, self.probe = files, load, probe
        self.fields_set: Dict[str, Any] = {}  # the file fields this module set on the metadata


_LAZY: Dict[str, _Lazy] = {}


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` or ``datasets`` (read at each call)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_lazily(name: str, files: Callable[[], Dict[str, str]],
                    load: Callable[[], List[Dict]], probe: Callable[[], Optional[str]],
                    classes: Sequence[str], slice_classes: bool) -> None:
    """Register ``name`` with its static metadata (``classes`` as ``image_classes`` and the
    classification evaluator when ``slice_classes``, else as ``thing_classes`` and the COCO
    evaluator) and a loader that sets the file fields ``files()`` finds (``json_file``,
    ``image_root``, ...) on the name's metadata, then returns ``load()``; ``probe()`` says why
    the dataset cannot be loaded now (a missing file and how to prepare it) or returns
    ``None``."""
    _LAZY[name] = _Lazy(files, load, probe)
    DatasetCatalog.register(name, functools.partial(_load, name))
    if slice_classes:
        MetadataCatalog.get(name).set(image_classes=list(classes),
                                      evaluator_type=CT_CLS_EVALUATOR)
    else:
        MetadataCatalog.get(name).set(thing_classes=list(classes), evaluator_type="coco")


def _load(name: str) -> List[Dict]:
    resolve(name)
    return _LAZY[name].load()


def resolve(name: str) -> None:
    """Set the file fields of a predefined dataset on its metadata now (e.g. before its
    evaluator is built, so that a COCO evaluator reads the original annotation file); nothing
    for other names."""
    lazy = _LAZY.get(name)
    if lazy is None:
        return
    meta = MetadataCatalog.get(name)
    for key, value in lazy.files().items():
        old = meta.get(key, None)
        if old is None:
            meta.set(**{key: value})
            lazy.fields_set[key] = value
        elif old != value and lazy.fields_set.get(key) == old:
            raise DatasetError(f"dataset {name!r}: {key} is now {value!r} but was {old!r} when it "
                               "was first used in this process (its files moved, e.g. "
                               "$DETECTRON2_DATASETS changed); restart to load it from there")
        # another value set by someone else (a COCO evaluator's converted copy of the
        # annotations) is theirs to keep


def is_lazy(name: str) -> bool:
    """Whether ``name`` still has its predefined (lazy) registration."""
    return name in _LAZY


def release(name: str) -> bool:
    """Drop the predefined registration of ``name`` so that the caller can register its own
    under that name; ``False`` (nothing done) when ``name`` is not a predefined one."""
    if _LAZY.pop(name, None) is None:
        return False
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    return True


def not_prepared(name: str) -> Optional[str]:
    """Why the predefined dataset ``name`` cannot be loaded now, or ``None`` (also for a name
    that is not, or no longer, a predefined registration)."""
    lazy = _LAZY.get(name)
    return None if lazy is None else lazy.probe()
