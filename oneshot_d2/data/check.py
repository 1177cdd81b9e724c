"""Dataset checker: finds what would silently spoil training or evaluation.

Per image: missing, empty, truncated or unreadable files, 16-bit slices (training needs 8-bit),
a size different from the recorded height / width, masks that do not decode, differ in size
from the image, are empty or reach outside it, unknown lesion categories or slice labels.
Across images: duplicated files or identical image content (within a split: warning; across
train / evaluation splits: error), and **patient leakage**: a patient id present in a training
split and in an evaluation split. Splits without patient ids are reported as "leakage not
checkable", never as clean.
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetError
from .io import decode_mask, open_image

__all__ = ["Finding", "DatasetReport", "check_dataset_dicts", "check_dataset_splits"]

logger = logging.getLogger(__name__)


@dataclass
class Finding:
    """One problem: ``severity`` is ``error`` (fix before training) or ``warning``."""
    severity: str
    dataset: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.dataset}: {self.file}: {self.problem}"


@dataclass
class DatasetReport:
    """Findings plus per-dataset counts (images, instances, classes, patients)."""
    findings: List[Finding] = field(default_factory=list)
    stats: Dict[str, Dict] = field(default_factory=dict)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def problems(self, kind: str) -> List[Finding]:
        """Findings whose problem text contains ``kind`` (e.g. ``"patient leakage"``)."""
        return [f for f in self.findings if kind in f.problem]

    def summary(self) -> str:
        lines = [f"{name}: " + ", ".join(f"{k} {v}" for k, v in s.items())
                 for name, s in self.stats.items()]
        lines += [str(f) for f in self.findings]
        lines.append(f"{len(self.errors)} error(s), "
                     f"{len(self.findings) - len(self.errors)} warning(s)")
        return "\n".join(lines)


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _image_size(path: str):
    """(H, W) of an image file as training reads it (:func:`~oneshot_d2.data.io.open_image`:
    fully decoded, EXIF-oriented, 8-bit), or the problem (missing, empty, truncated, 16-bit)."""
    try:
        im = open_image(path)
    except DatasetError as e:
        message, prefix = str(e), f"{path}: "
        return None, message[len(prefix):] if message.startswith(prefix) else message
    return (im.height, im.width), None


def check_dataset_dicts(dicts: Sequence[Dict], name: str, num_thing_classes: Optional[int] = None,
                        num_image_classes: Optional[int] = None) -> List[Finding]:
    """Per-image checks of Detectron2 dataset dicts (segmentation and / or classification)."""
    out: List[Finding] = []

    def add(severity, file, problem):
        out.append(Finding(severity, name, file, problem))

    for d in dicts:
        path = d.get("file_name", "?")
        size, err = _image_size(path)
        if err:
            add("error", path, err)
            continue
        if "height" in d and "width" in d and (int(d["height"]), int(d["width"])) != size:
            add("error", path, f"recorded size {d['width']}x{d['height']} (WxH) differs from "
                               f"the image's {size[1]}x{size[0]}")
        if "image_label" in d and num_image_classes is not None:
            label = d["image_label"]
            if not isinstance(label, (int, np.integer)) or not 0 <= label < num_image_classes:
                add("error", path, f"unknown slice label {label!r} (classes 0..."
                                   f"{num_image_classes - 1})")
        for k, ann in enumerate(d.get("annotations", [])):
            where = f"annotation {k}"
            cat = ann.get("category_id")
            if num_thing_classes is not None and not (
                    isinstance(cat, (int, np.integer)) and 0 <= cat < num_thing_classes):
                add("error", path, f"{where}: unknown lesion category {cat!r}")
            if "segmentation" not in ann:
                continue
            try:
                m = decode_mask(ann["segmentation"], *size)
                if m is None:
                    raise ValueError("no mask (empty or missing 'segmentation')")
            except Exception as e:  # noqa: BLE001 - any decoding failure is a finding
                add("error", path, f"{where}: mask does not decode ({e})")
                continue
            if m.shape != size:
                add("error", path, f"{where}: mask size {m.shape[1]}x{m.shape[0]} differs from "
                                   f"the image's {size[1]}x{size[0]}")
            elif not m.any():
                add("error", path, f"{where}: empty mask")
            x, y, bw, bh = ann.get("bbox", (0, 0, 0, 0))
            if x < -0.5 or y < -0.5 or x + bw > size[1] + 0.5 or y + bh > size[0] + 0.5:
                add("error", path, f"{where}: box {ann.get('bbox')} outside the "
                                   f"{size[1]}x{size[0]} image")
    return out


def _duplicates(entries: Dict[str, List[str]], key: str, content: Dict[str, List[str]],
                split_of: Dict[str, str]) -> List[Finding]:
    """Findings for file names / contents listed by more than one record."""
    out = []
    for what, table in (("file", entries), ("identical image content", content)):
        for value, datasets in table.items():
            if len(datasets) < 2:
                continue
            splits = {split_of[n] for n in datasets}
            severity = "error" if len(splits) > 1 else "warning"
            shown = value if what == "file" else f"sha1 {value[:12]}"
            out.append(Finding(severity, ",".join(sorted(set(datasets))), shown,
                               f"duplicate {what} listed {len(datasets)} times"
                               + (" across train and evaluation splits" if len(splits) > 1
                                  else "")))
    return out


def check_dataset_splits(train: Iterable[str] = (), test: Iterable[str] = (),
                   hash_content: bool = True) -> DatasetReport:
    """Check registered datasets: each one, duplicates, and patient leakage train <-> test.

    Args:
        train: names of training datasets (segmentation and classification alike).
        test: names of evaluation datasets (validation / test).
        hash_content: also find identical image files under different names (reads every file).
    """
    report = DatasetReport()
    split_of = {**{n: "train" for n in train}, **{n: "test" for n in test}}
    files: Dict[str, List[str]] = defaultdict(list)
    contents: Dict[str, List[str]] = defaultdict(list)
    patients: Dict[str, Dict[str, set]] = {"train": defaultdict(set), "test": defaultdict(set)}
    for name, split in split_of.items():
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        thing = meta.get("thing_classes", None)
        image_classes = meta.get("image_classes", None)
        report.findings += check_dataset_dicts(
            dicts, name, len(thing) if thing else None,
            len(image_classes) if image_classes else None)
        with_pid = 0
        for d in dicts:
            path = d.get("file_name", "?")
            files[path].append(name)
            if hash_content and _image_size(path)[1] is None:
                contents[_file_digest(path)].append(name)
            pid = d.get("patient_id")
            if pid is not None:
                with_pid += 1
                patients[split][str(pid)].add(name)
        stats = {"split": split, "images": len(dicts)}
        if thing:
            stats["instances"] = sum(len(d.get("annotations", [])) for d in dicts)
        if image_classes:
            counts = np.bincount([int(d["image_label"]) for d in dicts if "image_label" in d],
                                 minlength=len(image_classes))
            stats["classes"] = dict(zip(image_classes, counts.tolist()))
        stats["patients"] = len({str(d["patient_id"]) for d in dicts
                                 if d.get("patient_id") is not None})
        report.stats[name] = stats
        if with_pid < len(dicts):
            report.findings.append(Finding(
                "warning", name, "-", f"{len(dicts) - with_pid} of {len(dicts)} images have no "
                "patient id: cross-split leakage not checkable for them"))
    report.findings += _duplicates(files, "file", contents, split_of)
    for pid in sorted(set(patients["train"]) & set(patients["test"])):
        report.findings.append(Finding(
            "error", ",".join(sorted(patients["train"][pid] | patients["test"][pid])),
            f"patient {pid}", "patient leakage: in training split(s) "
            f"{sorted(patients['train'][pid])} and evaluation split(s) "
            f"{sorted(patients['test'][pid])}"))
    return report
