"""Orientation of CT slices: the display orientation of the training data and RAS+ (canonical)
NIfTI arrays, both ways.

Display orientation (radiological, as the phantom and the public slices look): ``pixels[k]``
has rows going anterior -> posterior and columns going patient right -> patient left; slices go
from inferior to superior. For a RAS+ array ``data[i, j, k]`` this is
``pixels[k] = data[::-1, ::-1, k].T`` (:func:`canonical_to_display`).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["canonical_to_display", "display_to_canonical", "display_affine"]


def _flip_xy(nx: int, ny: int) -> np.ndarray:
    """(4, 4) voxel map display ``(c, r, k)`` -> canonical ``(nx-1-c, ny-1-r, k)``."""
    return np.array([[-1.0, 0, 0, nx - 1], [0, -1.0, 0, ny - 1], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def canonical_to_display(data: np.ndarray) -> np.ndarray:
    """RAS+ array ``data[i, j, k]`` (X, Y, N) -> display slices ``pixels[k]`` (N, Y, X)."""
    return np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))


def display_to_canonical(pixels: np.ndarray) -> np.ndarray:
    """Display slices (N, H, W) -> RAS+ array (W, H, N); the inverse of
    :func:`canonical_to_display` (``data[:, :, k] = pixels[k].T[::-1, ::-1]``)."""
    return np.ascontiguousarray(pixels.transpose(2, 1, 0)[::-1, ::-1, :])


def display_affine(canonical_affine: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """(4, 4) affine of the display volume laid out as ``pixels.transpose(2, 1, 0)`` from the
    affine of the canonical array of shape ``shape`` (X, Y, N)."""
    return np.asarray(canonical_affine, dtype=np.float64) @ _flip_xy(shape[0], shape[1])
