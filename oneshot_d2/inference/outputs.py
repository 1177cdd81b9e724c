"""Writing a study's outputs, all or nothing.

Layout under the output folder ``OUT``::

    OUT/slices.csv                  # every slice of every study of the run
    OUT/studies.csv                 # one row per study of the run: result, burden, or its error
    OUT/<study>/report.json         # geometry, model, patient result, burden, per-slice results
    OUT/<study>/slices.csv          # the study's rows of OUT/slices.csv
    OUT/<study>/config.yaml         # the full config the model ran with
    OUT/<study>/summary.png         # with --save-overlays
    OUT/<study>/overlays/0000.png   # with --save-overlays: one per slice
    OUT/<study>/lesions.nii.gz      # with --save-nifti: lesion labels in the input's geometry
    OUT/<study>/lesions_seg.dcm     # with --output-type dicom-seg: the labels as a DICOM SEG
    OUT/<study>/measurements_sr.dcm # with --output-type dicom-sr: the numbers as a DICOM SR
    OUT/<study>/report.html         # with --output-type html: the study's page
    OUT/index.html                  # with --output-type html: the run's page

A study folder is written under a temporary name and renamed into place
(:func:`~oneshot_d2.utils.file_io.replace_folder`), so after a kill ``OUT/<study>`` is the
previous complete folder or the new complete one. An existing ``OUT/<study>`` that this tool did
not write (no ``report.json`` of ``tools/predict.py``) is never replaced. The CSV files are
written atomically too.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..errors import StudyError
from ..utils.file_io import atomic_write_text
from ..utils.managed_folder import foreign_entry, locked_folder, new_folder_version
from .dicom_seg import SEG_FILE, dicom_seg
from .dicom_sr import SR_FILE, dicom_sr
from .html_report import index_html, study_html
from .overlays import key_slices, slice_overlay, summary_figure
from .report import negative_class_index
from .study_prediction import REPORT_TOOL, StudyPrediction

__all__ = ["write_study", "write_run_tables", "write_studies_table", "is_predict_folder",
           "read_study_report", "csv_text", "study_summary_row"]

logger = logging.getLogger(__name__)
HTML_FILE = "report.html"


def read_study_report(folder: str) -> Optional[Dict]:
    """The ``report.json`` of a complete study folder written by this tool (it names
    ``tools/predict.py``), else ``None``."""
    try:
        with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("tool") == REPORT_TOOL else None


def is_predict_folder(folder: str) -> bool:
    """True when ``folder`` holds a complete study written by this tool."""
    return read_study_report(folder) is not None


def csv_text(rows: Sequence[Dict]) -> str:
    """CSV of ``rows`` (dicts); the columns are the union of their keys in first-seen order."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _check_replaceable(folder: str) -> None:
    what = foreign_entry(folder, is_predict_folder)
    if what is not None:
        raise StudyError(f"{folder}: refusing to replace this {what}: it was not written by "
                         "tools/predict.py (no report.json of it); move it away or choose "
                         "another --output")


def _overlay(pred: StudyPrediction, i: int, image_classes: List[str],
             lesion_classes: List[str]) -> np.ndarray:
    """Slice ``i``'s overlay (BGR): lesion contours, RoI batch, class."""
    return slice_overlay(
        pred.images[i], pred.labels[i], lesion_classes,
        None if pred.probs is None else pred.probs[i], image_classes,
        pred.roi_boxes[i] if pred.roi_boxes else None,
        pred.roi_weights[i] if pred.roi_weights else None,
        caption=f"{pred.study.name} slice {i}")


def _key_slices(pred: StudyPrediction, image_classes: List[str]) -> List[int]:
    """The slices worth a look (:func:`~.overlays.key_slices`)."""
    area = (pred.labels > 0).reshape(len(pred.labels), -1).sum(axis=1)
    neg = negative_class_index(image_classes, "") if image_classes else None
    positive = [c for c in range(len(image_classes)) if c != neg]
    return key_slices(pred.probs, area, positive)


def _scan_axis(pred: StudyPrediction):
    """(positions along the scan, their name): mm when known, else slice indices."""
    if pred.study.positions is not None:
        return np.asarray(pred.study.positions, float), "slice position (mm)"
    return np.arange(len(pred.labels), dtype=float), "slice index"


def _write_html(tmp: str, pred: StudyPrediction, report: Dict, image_classes: List[str],
                lesion_classes: List[str]) -> None:
    """``report.html`` into ``tmp``."""
    xs, xlabel = _scan_axis(pred)
    pictures = {i: _overlay(pred, i, image_classes, lesion_classes)
                for i in _key_slices(pred, image_classes)}
    with open(os.path.join(tmp, HTML_FILE), "w", encoding="utf-8") as f:
        f.write(study_html(report, xs, xlabel, pred.probs, pictures))


def _write_pictures(tmp: str, pred: StudyPrediction, report: Dict, image_classes: List[str],
                    lesion_classes: List[str]) -> None:
    """Overlays of every slice and the summary figure into ``tmp``."""
    study = pred.study
    os.makedirs(os.path.join(tmp, "overlays"))
    overlays = {}
    for i in range(len(pred.images)):
        picture = _overlay(pred, i, image_classes, lesion_classes)
        if not cv2.imwrite(os.path.join(tmp, "overlays", f"{i:04d}.png"), picture):
            raise OSError(f"could not write the overlay of slice {i} in {tmp}")
        overlays[i] = picture
    chosen = _key_slices(pred, image_classes)
    xs, xlabel = _scan_axis(pred)
    per_class = np.stack([(pred.labels == k + 1).reshape(len(pred.labels), -1).sum(axis=1)
                          for k in range(len(lesion_classes))], axis=1) \
        if lesion_classes else np.zeros((len(pred.labels), 0))
    unit = "px"
    if study.spacing is not None:
        per_class = per_class * float(np.prod(study.spacing)) / 1000.0
        unit = "mL"
    title = study.name
    if report.get("patient"):
        title += f": {report['patient']['class']}"
    burden = report.get("burden") or {}
    if "ml" in burden:
        title += f", lesions {burden['ml']['total']:.1f} mL"
    if "percent_of_lung" in burden and burden["percent_of_lung"]["total"] is not None:
        title += f" ({burden['percent_of_lung']['total']:.1f} % of lung)"
    summary_figure(os.path.join(tmp, "summary.png"), title, xs, xlabel, pred.probs,
                   image_classes, per_class, lesion_classes, unit,
                   {i: overlays[i] for i in chosen})


def write_study(out_root: str, pred: StudyPrediction, report: Dict, config_yaml: str,
                image_classes: List[str], lesion_classes: List[str],
                save_overlays: bool = False, save_nifti: bool = False,
                output_types: Sequence[str] = (), model_name: str = "oneshot_d2") -> str:
    """Write one study's outputs as ``out_root/<study>``, atomically (module docstring).
    ``output_types``: ``"html"`` (``report.html``, :mod:`.html_report`), ``"dicom-seg"`` (the
    lesion labels as a DICOM SEG, :mod:`.dicom_seg`) and / or ``"dicom-sr"`` (the
    measurements as a DICOM SR, :mod:`.dicom_sr`; both for a DICOM study only, their algorithm
    named ``model_name``).

    Returns:
        the study folder.
    Raises:
        StudyError: ``out_root/<study>`` exists and was not written by this tool.
    """
    import nibabel as nib

    name = pred.study.name
    folder = os.path.join(out_root, name)
    with locked_folder(folder, is_predict_folder, "prediction"):
        _check_replaceable(folder)
        with new_folder_version(folder, kill_stage="predict") as tmp:
            with open(os.path.join(tmp, "slices.csv"), "w", encoding="utf-8") as f:
                f.write(csv_text(report["slices"]))
            with open(os.path.join(tmp, "config.yaml"), "w", encoding="utf-8") as f:
                f.write(config_yaml)
            if save_nifti:
                nib.save(pred.study.label_volume_image(pred.labels),
                         os.path.join(tmp, "lesions.nii.gz"))
            if save_overlays:
                _write_pictures(tmp, pred, report, image_classes, lesion_classes)
            if "html" in output_types:
                _write_html(tmp, pred, report, image_classes, lesion_classes)
            if "dicom-seg" in output_types:
                dicom_seg(pred.study, pred.labels, lesion_classes, model_name).save_as(
                    os.path.join(tmp, SEG_FILE), enforce_file_format=True)
            if "dicom-sr" in output_types:
                dicom_sr(pred.study, report, model_name).save_as(
                    os.path.join(tmp, SR_FILE), enforce_file_format=True)
            with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)  # last: it marks the folder complete
    return folder


def study_summary_row(name: str, source: str, report: Optional[Dict] = None,
                      error: str = "") -> Dict:
    """One row of ``studies.csv``: the study's patient result and burden, or its error."""
    row: Dict = {"study": name, "source": source, "status": "error" if error else "ok"}
    if report is not None:
        row["slices"] = report["geometry"]["slices"]
        patient = report.get("patient")
        if patient:
            row["patient_class"] = patient["class"]
            for cls, score in patient["scores"].items():
                row[f"score_{cls}"] = "" if score is None else round(score, 6)
        burden = report.get("burden") or {}
        for key in ("ml", "percent_of_lung"):
            for cls, value in (burden.get(key) or {}).items():
                row[f"lesion_{key}_{cls}"] = "" if value is None else round(value, 4)
        if "lung_ml" in burden:
            row["lung_ml"] = round(burden["lung_ml"], 2)
    row["error"] = error
    return row


def write_studies_table(out_root: str, study_rows: List[Dict], html: bool = False) -> None:
    """``OUT/studies.csv`` (and with ``html`` ``OUT/index.html``), atomically; rewritten after
    each study of a run."""
    atomic_write_text(os.path.join(out_root, "studies.csv"), csv_text(study_rows))
    if html:
        pages = {r["study"]: f"{r['study']}/{HTML_FILE}" for r in study_rows
                 if r.get("status") == "ok"
                 and os.path.isfile(os.path.join(out_root, r["study"], HTML_FILE))}
        atomic_write_text(os.path.join(out_root, "index.html"), index_html(study_rows, pages))


def write_run_tables(out_root: str, slice_rows: List[Dict], study_rows: List[Dict],
                     html: bool = False) -> None:
    """``OUT/slices.csv`` and ``OUT/studies.csv`` (``OUT/index.html``) of this run, atomically."""
    atomic_write_text(os.path.join(out_root, "slices.csv"), csv_text(slice_rows))
    write_studies_table(out_root, study_rows, html)
