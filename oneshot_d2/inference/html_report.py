"""Self-contained HTML pages of predict's results (``--output-type html``): ``report.html`` per
study and ``index.html`` over the run. Everything is in the page (images as data URIs, the
slice-probability curve as inline SVG, no script, no font or style sheet from the network), so a
page opens from a USB stick on a machine without network.

A study's page holds: the patient-level result with its class scores and rule, the lesion
burden (per class, per lung), the 3-D lesions, the slice-probability curve along the scan, the
key slices with lesion contours and the model's own explanation (RoI boxes weighted by the
affinity head's weights or the LSTM's attention), and the model card. Element ids
(``patient``, ``burden``, ``lesions3d``, ``curve``, ``key-slices``, ``model-card``) let tests
and style sheets find the parts.
"""
from __future__ import annotations

import base64
import html
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["INTENDED_USE", "study_html", "index_html"]

INTENDED_USE = ("Research use only: not for clinical use, no regulatory clearance. Slice-level "
                "COVID-19 / pneumonia classification and lesion segmentation of chest CT, as "
                "in the papers by A. Ter-Sarkisov (2021); results depend on the data the model "
                "was trained on (its model card) and are not a diagnosis.")
_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_STYLE = """
body{font-family:sans-serif;margin:1.5em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{background:#fff3cd;border:1px solid #e0c36b;
padding:.5em .8em}.bar{display:inline-block;height:.8em;background:#1f77b4}
.slices{display:flex;flex-wrap:wrap;gap:12px}.slices figure{margin:0}
.slices img{width:256px;height:auto;border:1px solid #999}.err{color:#a00}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 2) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def png_data_uri(image: np.ndarray) -> str:
    """A BGR or grey uint8 image as a ``data:image/png;base64,...`` URI."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n"
            "</body></html>\n")


def _table(header: Optional[Sequence[str]], rows: List[Sequence[str]]) -> str:
    """A table (no header row when ``header`` is None); header cells are escaped here, body
    cells are HTML already. The first column is left-aligned."""
    left = ' class="l"'

    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f"<{tag}{left if i == 0 else ''}>{v}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    head = "" if header is None else f"<tr>{cells('th', [_e(h) for h in header])}</tr>"
    return f"<table>{head}{body}</table>"


def curve_svg(xs: Sequence[float], probs: Optional[np.ndarray], class_names: Sequence[str],
              x_label: str, width: int = 900, height: int = 240) -> str:
    """Inline SVG of each class's slice probability along the scan (N points per class)."""
    if probs is None or len(xs) == 0:
        return "<p>The model has no slice classifier.</p>"
    left, right, top, bottom = 50, 130, 10, 40
    x0, x1 = float(min(xs)), float(max(xs))
    span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return left + (float(x) - x0) / span * (width - left - right)

    def py(p: float) -> float:
        return top + (1.0 - float(p)) * (height - top - bottom)

    parts = [f"<svg id=\"curve-svg\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" "
             f"height=\"{height}\" role=\"img\" aria-label=\"slice probabilities\">",
             f"<rect x=\"{left}\" y=\"{top}\" width=\"{width - left - right}\" "
             f"height=\"{height - top - bottom}\" fill=\"none\" stroke=\"#999\"/>"]
    for p in (0.0, 0.5, 1.0):
        parts.append(f"<text x=\"{left - 6}\" y=\"{py(p) + 4:.1f}\" font-size=\"11\" "
                     f"text-anchor=\"end\">{p:.1f}</text>")
    for x in (x0, x1):
        parts.append(f"<text x=\"{px(x):.1f}\" y=\"{height - bottom + 15}\" font-size=\"11\" "
                     f"text-anchor=\"middle\">{x:.1f}</text>")
    parts.append(f"<text x=\"{(left + width - right) / 2:.1f}\" y=\"{height - 6}\" "
                 f"font-size=\"12\" text-anchor=\"middle\">{_e(x_label)}</text>")
    for c, name in enumerate(class_names):
        colour = _COLOURS[c % len(_COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(p):.1f}" for x, p in zip(xs, probs[:, c]))
        parts.append(f"<polyline class=\"prob\" data-class=\"{_e(name)}\" fill=\"none\" "
                     f"stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>")
        parts.append(f"<text x=\"{width - right + 8}\" y=\"{top + 14 + 16 * c}\" font-size=\"12\" "
                     f"fill=\"{colour}\">{_e(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def study_html(report: Dict, xs: Sequence[float], x_label: str, probs: Optional[np.ndarray],
               key_pictures: Dict[int, np.ndarray]) -> str:
    """A study's ``report.html``.

    Args:
        report: the study's ``report.json`` dictionary.
        xs / x_label: the slices' positions along the scan (mm) or indices, and the axis name.
        probs: (N, C) slice class probabilities or ``None``.
        key_pictures: slice index -> BGR overlay (lesion contours, RoI batch, class).
    """
    model, patient = report["model"], report.get("patient")
    burden, lesions = report.get("burden") or {}, report.get("lesions_3d")
    body = [f"<h1>{_e(report['study'])}</h1>",
            "<p class=\"warn\" id=\"not-clinical\"><b>Not for clinical use.</b> "
            f"{_e(INTENDED_USE)}</p>",
            f"<p>Source: {_e(report['source'])} ({_e(report['kind'])}, "
            f"{report['geometry']['slices']} slices); written by oneshot_d2 "
            f"{_e(report['version'])} at {_e(report['created'])}.</p>"]
    body.append("<section id=\"patient\"><h2>Patient-level result</h2>")
    if patient:
        rows = [[_e(c), _num(s, 3), "" if s is None else
                 f"<span class=\"bar\" style=\"width:{150 * float(s):.0f}px\"></span>"]
                for c, s in patient["scores"].items()]
        rule = (f"rule {patient['rule']}, " + ", ".join(
            f"{k} {patient[k]}" for k in ("top_k", "thresh", "min_fraction") if k in patient)
            + f"; negative class {patient.get('negative_class')}")
        body += [f"<p id=\"patient-class\">Result: <b>{_e(patient['class'])}</b></p>",
                 _table(["class", "score", ""], rows), f"<p>{_e(rule)}</p>"]
    else:
        body.append("<p>The model has no slice classifier.</p>")
    body.append("</section>")
    body.append("<section id=\"burden\"><h2>Lesion burden</h2>")
    if "ml" in burden or "voxels" in burden:
        unit = "ml" if "ml" in burden else "voxels"
        percent = burden.get("percent_of_lung") or {}
        rows = [[_e(c), _num(v, 2 if unit == "ml" else 0), _num(percent.get(c))]
                for c, v in burden[unit].items()]
        body.append(_table(["lesions", "mL" if unit == "ml" else "voxels", "% of lung"], rows))
        if burden.get("lung_ml") is not None:
            body.append(f"<p>Lung volume {_num(burden['lung_ml'], 1)} mL.</p>")
        per_lung = burden.get("per_lung")
        if per_lung:
            rows = [[_e(side), _num(v["ml"]["total"]) if "ml" in v else "",
                     _num((v.get("percent_of_lung") or {}).get("total")),
                     _num(v.get("lung_ml"), 1)] for side, v in per_lung.items()]
            body.append(_table(["lung", "lesions mL", "% of this lung", "lung mL"], rows))
    else:
        body.append("<p>The model has no lesion classes.</p>")
    body.append("</section>")
    if lesions:
        in_ml = bool(lesions["lesions"]) and lesions["lesions"][0]["ml"] is not None
        rows = [[_e(d["class"]), _num(d["ml"]) if in_ml else str(d["voxels"]),
                 f"{d['slices'][0]}-{d['slices'][1]}", _num(d["largest_diameter_mm"], 1)]
                for d in lesions["lesions"][:20]]
        body += ["<section id=\"lesions3d\"><h2>Lesions in 3-D</h2>",
                 f"<p>{lesions['count']['total']} lesions ("
                 + ", ".join(f"{_e(k)} {v}" for k, v in lesions["count"].items() if k != "total")
                 + "); the 20 largest:</p>",
                 _table(["class", "mL" if in_ml else "voxels", "slices",
                         "largest diameter (mm)"], rows), "</section>"]
    body += ["<section id=\"curve\"><h2>Slice probabilities along the scan</h2>",
             curve_svg(xs, probs, model.get("image_classes") or [], x_label), "</section>"]
    figures = "".join(f"<figure><img alt=\"slice {i}\" src=\"{png_data_uri(img)}\">"
                      f"<figcaption>slice {i}</figcaption></figure>"
                      for i, img in sorted(key_pictures.items()))
    body += ["<section id=\"key-slices\"><h2>Key slices</h2><p>Lesion contours by class; the "
             "RoI batch the slice classifier read, each box as wide and bright as the head's "
             "weight of it (affinity weights or LSTM attention).</p>"
             f"<div class=\"slices\">{figures}</div></section>"]
    card = [["architecture", f"{_e(model['meta_architecture'])} / {_e(model['image_head'])}"],
            ["trained on", _e(", ".join(model.get("trained_on") or []) or "unknown")],
            ["slice classes", _e(", ".join(model.get("image_classes") or []))],
            ["lesion classes", _e(", ".join(model.get("lesion_classes") or []))],
            ["input size", _e(model.get("input_size"))],
            ["weights", _e(model.get("weights"))], ["device", _e(model.get("device"))]]
    body += ["<section id=\"model-card\"><h2>Model card</h2>", _table(None, card),
             f"<p>Intended use: {_e(INTENDED_USE)}</p></section>"]
    return _page(f"{report['study']}: oneshot_d2 report", "\n".join(body))


def index_html(study_rows: List[Dict], pages: Dict[str, str]) -> str:
    """The run's ``index.html``: one row per study (``studies.csv``'s rows), linking each
    study's page (``pages``: study name -> relative path), failed studies with their error."""
    rows = []
    for r in study_rows:
        name = r.get("study") or "(not found)"
        link = (f"<a href=\"{_e(pages[name])}\">{_e(name)}</a>" if name in pages else _e(name))
        total, percent = r.get("lesion_ml_total", ""), r.get("lesion_percent_of_lung_total", "")
        status = _e(r.get("status", ""))
        if r.get("error"):
            status = f"<span class=\"err\">{status}: {_e(r['error'])}</span>"
        rows.append([link, status, _e(r.get("patient_class", "")), _e(total), _e(percent)])
    body = ["<h1>oneshot_d2 predictions</h1>",
            f"<p class=\"warn\"><b>Not for clinical use.</b> {_e(INTENDED_USE)}</p>",
            "<section id=\"studies\">",
            _table(["study", "status", "patient result", "lesions mL", "% of lung"], rows),
            "</section>"]
    return _page("oneshot_d2 predictions", "\n".join(body))
