"""Synthetic chest-CT phantom: axial slices in Hounsfield units with lesion masks.

The phantom is oneshot_d2's embedded default data (demo, tests). Each slice is rendered from a
per-patient anatomy (body habitus, lung and heart size) and a cranio-caudal level ``z`` in [0, 1]
(apex to base), then, depending on the slice class:

* **normal**: no lesion;
* **COVID-19-like**: bilateral, peripheral / subpleural, multifocal ground-glass opacities
  (about -700..-300 HU, hazy, vessels still visible), some with a consolidated core or a
  crazy-paving reticulation;
* **common-pneumonia-like**: unilateral lobar consolidation (about -100..+100 HU, dense, vessels
  obscured) bounded by a fissure, optional air bronchograms, a thin GGO rim.

Masks use the CNCB-NCOV encoding: 0 background, 1 lung field, 2 GGO, 3 consolidation. Display
convention is radiological: anterior up, the patient's right on the image's left.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

__all__ = [
    "BACKGROUND", "LUNG", "GGO", "CONSOLIDATION", "CLASS_NAMES", "PatientAnatomy",
    "PhantomSlice", "sample_anatomy", "render_slice", "min_slice_size",
]

BACKGROUND, LUNG, GGO, CONSOLIDATION = 0, 1, 2, 3
# COVIDx-CT class ids: 0 normal, 1 common pneumonia, 2 COVID-19.
CLASS_NAMES: Tuple[str, str, str] = ("Normal", "CP", "COVID-19")
NORMAL, CP, COVID = 0, 1, 2

AIR_HU = -1000.0


def min_slice_size(min_area: int = 100) -> int:
    """The smallest slice size (pixels) whose lesions still exceed ``min_area`` pixels often
    enough to give a segmentation set with instances (measured: at 64 px about half the
    lesion slices keep a component of more than 100 px, none at 40). Lesion areas scale with
    the size squared, so the minimum grows with the square root of ``min_area``; never below
    32 px (the anatomy needs it)."""
    return max(32, math.ceil(64 * math.sqrt(max(min_area, 1) / 100)))


@dataclass(frozen=True)
class PatientAnatomy:
    """Per-patient body habitus; all lengths in units of half the image size."""

    body_ax: float  # body half-width
    body_ay: float  # body half-height
    fat: float  # subcutaneous fat thickness
    lung_ax: float  # lung half-width at mid level
    lung_ay: float  # lung half-height at mid level
    heart_scale: float
    lung_hu: float  # mean parenchymal attenuation
    shape_seed: int  # seeds the smooth boundary perturbations shared by the patient's slices


@dataclass
class PhantomSlice:
    """One rendered slice.

    Attributes:
        hu: (H, W) float32 Hounsfield units.
        mask: (H, W) uint8 in {0 background, 1 lung, 2 GGO, 3 consolidation}.
        label: slice class id (0 normal, 1 CP, 2 COVID-19).
        body_box: (x1, y1, x2, y2) int box of the body, max-exclusive.
    """

    hu: np.ndarray
    mask: np.ndarray
    label: int
    body_box: Tuple[int, int, int, int]


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    """Draw one patient's habitus."""
    body_ax = rng.uniform(0.80, 0.92)
    return PatientAnatomy(
        body_ax=body_ax,
        body_ay=body_ax * rng.uniform(0.66, 0.78),
        fat=rng.uniform(0.03, 0.09),
        lung_ax=rng.uniform(0.29, 0.33),
        lung_ay=rng.uniform(0.40, 0.46),
        heart_scale=rng.uniform(0.85, 1.15),
        lung_hu=rng.uniform(-880.0, -830.0),
        shape_seed=int(rng.integers(0, 2**31 - 1)),
    )



# ---------------------------------------------------------------------------------------------
# helpers
def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation, (size, size) float32."""
    field = rng.standard_normal((size, size)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return field / (field.std() + 1e-6)


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, ax: float, ay: float,
             angle: float = 0.0) -> np.ndarray:
    """Normalised ellipse equation: < 1 inside. ``angle`` in radians."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cx, v - cy
    x = (du * c + dv * s) / ax
    y = (-du * s + dv * c) / ay
    return x * x + y * y


def _paint(hu: np.ndarray, region: np.ndarray, value) -> None:
    hu[region] = value if np.isscalar(value) else value[region]


def _to_px(x: float, size: int) -> int:
    return int(round((x + 1.0) * size / 2.0))


# ---------------------------------------------------------------------------------------------
# anatomy
def _render_anatomy(rng: np.random.Generator, size: int, a: PatientAnatomy, z: float):
    """Render the lesion-free thorax. Returns (hu, lung mask bool, body mask bool, vessel layer
    inputs) where ``hu`` is float32 HU with parenchyma but without vessels."""
    half = size / 2.0
    coords = (np.arange(size, dtype=np.float32) + 0.5) / half - 1.0
    u, v = np.meshgrid(coords, coords)  # u: left->right, v: anterior(top)->posterior(bottom)
    shape_rng = np.random.default_rng(a.shape_seed)
    body_warp = _smooth_noise(shape_rng, size, size / 6.0)
    lung_warp_r = _smooth_noise(shape_rng, size, size / 10.0)
    lung_warp_l = _smooth_noise(shape_rng, size, size / 10.0)

    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    # CT table below the patient.
    table_y = 0.05 + a.body_ay + 0.06
    table = (np.abs(v - table_y) < 0.018) & (np.abs(u) < 0.95)
    _paint(hu, table, 120.0)

    body_cy = 0.05
    body = _ellipse(u, v, 0.0, body_cy, a.body_ax, a.body_ay) + 0.02 * body_warp < 1.0
    _paint(hu, body, -100.0)  # subcutaneous fat
    inner_ax, inner_ay = a.body_ax - a.fat, a.body_ay - a.fat
    muscle = _ellipse(u, v, 0.0, body_cy, inner_ax, inner_ay) + 0.02 * body_warp < 1.0
    _paint(hu, muscle & body, 45.0)
    cavity_ax, cavity_ay = inner_ax - 0.07, inner_ay - 0.06
    cavity = _ellipse(u, v, 0.0, body_cy + 0.01, cavity_ax, cavity_ay) < 1.0

    # Lung cross-section grows from the apex, peaks mid-chest and shrinks near the diaphragm.
    level = np.clip(np.sin(np.pi * (0.15 + 0.8 * z)), 0.35, 1.0)
    lax, lay = a.lung_ax * (0.55 + 0.45 * level), a.lung_ay * (0.6 + 0.4 * level)
    lung_cy = body_cy + 0.03
    right = _ellipse(u, v, -0.40 * (0.75 + 0.25 * level), lung_cy, lax, lay, 0.08)
    left = _ellipse(u, v, 0.40 * (0.75 + 0.25 * level), lung_cy, lax * 0.95, lay, -0.08)
    lungs = ((right + 0.12 * lung_warp_r < 1.0) | (left + 0.12 * lung_warp_l < 1.0)) & cavity

    # Mediastinum, heart (from mid-chest down), great vessels, spine carve the lungs.
    # wider anteriorly (thymus / great vessels), smoothly
    mediastinum = (np.abs(u - 0.02) < 0.10 + 0.05 * np.clip((-0.05 - v) / 0.15, 0.0, 1.0)) & cavity
    heart = np.zeros_like(lungs)
    if z > 0.45:
        hs = a.heart_scale * min(1.0, (z - 0.35) * 2.0)
        heart = _ellipse(u, v, 0.10, -0.08, 0.24 * hs, 0.21 * hs, -0.5) < 1.0
    spine_c = (0.0, body_cy + a.body_ay - 0.20)
    vertebra = _ellipse(u, v, spine_c[0], spine_c[1], 0.095, 0.085) < 1.0
    desc_aorta = _ellipse(u, v, 0.10, spine_c[1] - 0.08, 0.065, 0.065) < 1.0
    carve = mediastinum | heart | vertebra | desc_aorta
    carve = cv2.dilate(carve.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2) > 0
    lungs &= ~carve

    # Parenchyma: dependent (posterior) density gradient plus fine texture.
    texture = _smooth_noise(rng, size, 1.2)
    parenchyma = a.lung_hu + 55.0 * np.clip(v - lung_cy + 0.2, 0.0, None) + 12.0 * texture
    _paint(hu, cavity & ~lungs, 35.0)
    _paint(hu, lungs, parenchyma)

    # Mediastinal fat streaks, heart with pericardial fat, aorta, vertebra, spinal canal.
    fat_streaks = (_smooth_noise(rng, size, 3.0) > 1.0) & mediastinum & ~lungs
    _paint(hu, fat_streaks, -90.0)
    if heart.any():
        rim = heart & ~(cv2.erode(heart.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
        _paint(hu, heart, 40.0)
        _paint(hu, rim, -80.0)
    if z < 0.55:
        asc = _ellipse(u, v, 0.06, -0.12 - 0.1 * (0.55 - z), 0.075, 0.075) < 1.0
        _paint(hu, asc & ~lungs, 45.0)
    _paint(hu, desc_aorta, 45.0)
    _paint(hu, vertebra, 650.0)
    cancellous = _ellipse(u, v, spine_c[0], spine_c[1], 0.075, 0.065) < 1.0
    _paint(hu, cancellous, 220.0 + 30.0 * texture)
    canal = _ellipse(u, v, spine_c[0], spine_c[1] + 0.13, 0.04, 0.035) < 1.0
    _paint(hu, canal, 20.0)
    posterior_arch = (_ellipse(u, v, spine_c[0], spine_c[1] + 0.13, 0.075, 0.065) < 1.0) & ~canal
    _paint(hu, posterior_arch & ~lungs, 500.0)
    spinous = (np.abs(u - spine_c[0]) < 0.015) & (v > spine_c[1] + 0.18) & (v < spine_c[1] + 0.3)
    _paint(hu, spinous & body, 520.0)

    # Ribs: cortical rings in the chest wall, between fat and the pleura.
    n_ribs = int(rng.integers(7, 11))
    for k in range(n_ribs):
        theta = np.pi * (0.10 + 0.8 * k / max(n_ribs - 1, 1)) + rng.normal(0, 0.05)
        for side in (-1.0, 1.0):
            r_ax, r_ay = cavity_ax + 0.035, cavity_ay + 0.03
            cx, cy = side * r_ax * np.cos(theta - np.pi / 2), body_cy + r_ay * np.sin(
                theta - np.pi / 2) * -1.0
            rib = _ellipse(u, v, cx, cy, 0.032, 0.02, theta) < 1.0
            _paint(hu, rib & ~lungs, 600.0)
            marrow = _ellipse(u, v, cx, cy, 0.018, 0.009, theta) < 1.0
            _paint(hu, marrow & ~lungs, 250.0)

    # Central airways: trachea above the carina, main bronchi below it.
    airway_centres = [(0.0, -0.02)] if z < 0.35 else [(-0.09, 0.02), (0.11, 0.03)]
    for cx, cy in airway_centres:
        outer = _ellipse(u, v, cx, cy, 0.065, 0.06) < 1.0
        lumen = _ellipse(u, v, cx, cy, 0.05, 0.045) < 1.0
        _paint(hu, outer, 40.0)
        _paint(hu, lumen, AIR_HU + 20.0)
    return hu, lungs, body, u, v


def _draw_vessels(rng: np.random.Generator, hu: np.ndarray, lungs: np.ndarray, z: float) -> None:
    """Pulmonary vessels, in place, only inside the lungs: short branching in-plane segments from
    each hilum pointing laterally, thinner and fainter (partial volume) towards the periphery,
    plus cross-sectioned vessels seen as dots."""
    size = hu.shape[0]
    ss = 2  # supersampling for anti-aliased thin lines
    canvas = np.zeros((size * ss, size * ss), np.uint8)
    px = size / 256.0  # lengths below are in pixels of a 256-pixel image
    for side in (-1.0, 1.0):
        hilum = (_to_px(side * 0.16, size) * ss, _to_px(0.04, size) * ss)
        lateral = 0.0 if side > 0 else np.pi
        for _ in range(int(rng.integers(4, 7))):
            angle = lateral + rng.uniform(-1.3, 1.3)
            stack = [(hilum, angle, rng.uniform(1.6, 2.4) * px, 0)]
            while stack:
                (x, y), ang, width, depth = stack.pop()
                length = rng.uniform(9, 18) * px * ss
                ang += rng.normal(0, 0.2)
                x2, y2 = int(x + length * np.cos(ang)), int(y + length * np.sin(ang))
                value = int(255 * min(1.0, 0.35 + 0.3 * width / px))
                cv2.line(canvas, (x, y), (x2, y2), value, max(1, int(round(width * ss))),
                         cv2.LINE_AA)
                if depth < 3 and rng.random() < 0.85:
                    for _ in range(2):
                        stack.append(((x2, y2), ang + rng.normal(0, 0.45), width * 0.68,
                                      depth + 1))
    ys, xs = np.nonzero(lungs)
    if len(xs):
        n_dots = min(len(xs), int(rng.integers(20, 40) * px * px))
        for i in rng.choice(len(xs), size=n_dots, replace=False):
            r = rng.uniform(0.6, 1.6) * px * ss
            cv2.circle(canvas, (int(xs[i]) * ss, int(ys[i]) * ss), max(1, int(round(r))),
                       int(255 * min(1.0, 0.4 + 0.35 * r / (px * ss))), -1, cv2.LINE_AA)
    alpha = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha *= lungs / 255.0
    hu += alpha * (40.0 - hu)


# ---------------------------------------------------------------------------------------------
# lesions
def _blob(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cx: float, cy: float,
          ax: float, ay: float, angle: float, softness: float) -> np.ndarray:
    """An irregular lesion-shaped soft alpha map in [0, 1]."""
    size = u.shape[0]
    field = _ellipse(u, v, cx, cy, ax, ay, angle) + 0.35 * _smooth_noise(rng, size, size / 40.0)
    return np.clip((1.0 - field) / softness, 0.0, 1.0)


def _peripheral_site(rng: np.random.Generator, lung: np.ndarray, u: np.ndarray, v: np.ndarray,
                     band: float) -> Tuple[float, float, float]:
    """A point in ``lung`` within ``band`` (half-image units) of the pleura, preferring posterior
    positions. Returns (cx, cy, tangent angle)."""
    size = lung.shape[0]
    dist = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 5) / (size / 2.0)
    ys, xs = np.nonzero((dist > 0.02) & (dist < band))
    if len(xs) == 0:
        ys, xs = np.nonzero(lung)
    weights = 1.0 + 1.5 * np.clip(v[ys, xs] + 0.3, 0.0, None)
    i = rng.choice(len(xs), p=weights / weights.sum())
    y, x = ys[i], xs[i]
    gy, gx = np.gradient(dist)
    tangent = float(np.arctan2(gy[y, x], gx[y, x]) + np.pi / 2)
    return float(u[y, x]), float(v[y, x]), tangent


def _covid_lesions(rng, u, v, lungs, z):
    """Bilateral, peripheral, multifocal GGO with optional consolidated cores.
    Returns (ggo alpha, consolidation alpha, crazy-paving alpha), each (H, W) float32."""
    ggo = np.zeros(u.shape, np.float32)
    cons = np.zeros(u.shape, np.float32)
    paving = np.zeros(u.shape, np.float32)
    halves = [lungs & (u < 0), lungs & (u >= 0)]
    n_total = int(rng.integers(2, 7))
    sides = [0, 1] + list(rng.integers(0, 2, size=n_total - 2))  # bilateral: both sides at least
    for side in sides:
        lung = halves[side]
        if lung.sum() < 50:
            continue
        cx, cy, tangent = _peripheral_site(rng, lung, u, v, band=0.12)
        ax, ay = rng.uniform(0.07, 0.17), rng.uniform(0.045, 0.09)
        alpha = _blob(rng, u, v, cx, cy, ax, ay, tangent, softness=rng.uniform(0.5, 0.9))
        ggo = np.maximum(ggo, alpha)
        if rng.random() < 0.3:
            paving = np.maximum(paving, alpha)
        if rng.random() < 0.35:  # mixed lesion: consolidated core
            core = _blob(rng, u, v, cx, cy, ax * 0.5, ay * 0.5, tangent, softness=0.25)
            cons = np.maximum(cons, core * alpha)
    return ggo, cons, paving


def _cp_lesions(rng, u, v, lungs):
    """Unilateral lobar consolidation bounded by a fissure, with a thin GGO rim.
    Returns (ggo alpha, consolidation alpha, air-bronchogram flag)."""
    side = int(rng.integers(0, 2))
    lung = lungs & ((u < 0) if side == 0 else (u >= 0))
    # A lobe: the lung's part behind an oblique fissure (lower lobe) or in front of it.
    normal = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.7 else -np.pi / 2)
    ys, xs = np.nonzero(lung)
    if len(xs) == 0:
        zero = np.zeros(u.shape, np.float32)
        return zero, zero, False
    proj = u * np.cos(normal) + v * np.sin(normal)
    cut = np.quantile(proj[ys, xs], rng.uniform(0.35, 0.6))
    lobe = lung & (proj > cut)
    texture = _smooth_noise(rng, u.shape[0], u.shape[0] / 16.0)
    fill = np.clip((texture + rng.uniform(0.6, 1.6)) / 0.6, 0.0, 1.0)
    cons = cv2.GaussianBlur((lobe * fill).astype(np.float32), (0, 0), 1.2)
    rim = cv2.dilate((cons > 0.5).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    ggo = cv2.GaussianBlur((rim & lung).astype(np.float32), (0, 0), 2.0) * rng.uniform(0.6, 0.9)
    return ggo.astype(np.float32), cons.astype(np.float32), bool(rng.random() < 0.7)


def _air_bronchograms(rng, size: int, region: np.ndarray) -> np.ndarray:
    """Thin branching air-filled lines inside ``region``; alpha (H, W) float32."""
    canvas = np.zeros((size, size), np.uint8)
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        return canvas.astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):
        i = rng.integers(len(xs))
        x, y = int(xs[i]), int(ys[i])
        ang = rng.uniform(-np.pi, np.pi)
        for _ in range(int(rng.integers(2, 4))):
            length = rng.uniform(6, 16) * size / 256
            x2, y2 = int(x + length * np.cos(ang)), int(y + length * np.sin(ang))
            cv2.line(canvas, (x, y), (x2, y2), 255, 1, cv2.LINE_AA)
            x, y, ang = x2, y2, ang + rng.normal(0, 0.4)
    return canvas.astype(np.float32) / 255.0 * region


# ---------------------------------------------------------------------------------------------
def render_slice(rng: np.random.Generator, size: int, label: int, anatomy: PatientAnatomy,
                 z: float, noise_hu: float = 14.0) -> PhantomSlice:
    """Render one axial slice.

    Args:
        rng: random generator (the slice is a deterministic function of its state).
        size: output height = width in pixels.
        label: 0 normal, 1 common-pneumonia-like, 2 COVID-19-like.
        anatomy: the patient's habitus (:func:`sample_anatomy`).
        z: cranio-caudal level in [0, 1] (apex .. base).
        noise_hu: standard deviation of the image noise in HU.

    Returns:
        A :class:`PhantomSlice`.
    """
    if label not in (NORMAL, CP, COVID):
        raise ValueError(f"phantom slice label must be 0, 1 or 2, got {label!r}")
    hu, lungs, body, u, v = _render_anatomy(rng, size, anatomy, z)
    ggo = cons = paving = bronchi = np.zeros((size, size), np.float32)
    if label == COVID:
        ggo, cons, paving = _covid_lesions(rng, u, v, lungs, z)
    elif label == CP:
        ggo, cons, has_bronchi = _cp_lesions(rng, u, v, lungs)
        if has_bronchi:
            bronchi = _air_bronchograms(rng, size, cons > 0.6)
    ggo, cons = ggo * lungs, cons * lungs

    # GGO raises attenuation but leaves vessels visible: apply before the vessels.
    ggo_hu = rng.uniform(-650.0, -380.0) + 40.0 * _smooth_noise(rng, size, 2.0)
    hu += ggo * (ggo_hu - hu)
    if paving.any():
        grid = _smooth_noise(rng, size, 1.0)
        reticulation = (np.abs(grid) < 0.25).astype(np.float32) * paving * lungs
        hu += 120.0 * reticulation
    _draw_vessels(rng, hu, lungs, z)
    # Consolidation obscures the vessels; air bronchograms stay dark inside it.
    cons_hu = rng.uniform(-60.0, 60.0) + 20.0 * _smooth_noise(rng, size, 2.0)
    hu += cons * (cons_hu - hu)
    hu += bronchi * (AIR_HU + 80.0 - hu)

    # Partial-volume blur, then correlated quantum noise.
    hu = cv2.GaussianBlur(hu, (0, 0), 0.6)
    noise = rng.standard_normal((size, size)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.8)
    hu += noise * (noise_hu / (noise.std() + 1e-6))
    hu = np.clip(hu, -1024.0, 3071.0).astype(np.float32)

    mask = np.zeros((size, size), np.uint8)
    mask[lungs] = LUNG
    mask[lungs & (ggo > 0.5)] = GGO
    mask[lungs & (cons > 0.5)] = CONSOLIDATION
    ys, xs = np.nonzero(body)
    body_box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return PhantomSlice(hu=hu, mask=mask, label=label, body_box=body_box)
