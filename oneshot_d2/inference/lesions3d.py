"""Lesions counted in 3-D: the connected components of each lesion class's voxels across
neighbouring slices (26-connectivity: voxels sharing a face, an edge or a corner), each with its
volume, slice range and largest diameter (``report.json``'s ``lesions_3d``)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["lesions_3d", "largest_diameter"]

# above this many surface points, the diameter is taken over the convex hull's vertices
_HULL_ABOVE = 2000
_BLOCK = 2048


def largest_diameter(points: np.ndarray) -> float:
    """The largest distance between two of ``points`` (P, 3) (0 for fewer than two); memory
    bounded (blocks of :data:`_BLOCK` rows) for lesions of any size."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import cdist

    if len(points) < 2:
        return 0.0
    if len(points) > _HULL_ABOVE:
        # the farthest pair lies on the hull ("QJ": flat point sets, e.g. one slice, too)
        points = points[ConvexHull(points, qhull_options="QJ").vertices]
    return float(max(cdist(points[i:i + _BLOCK], points).max()
                     for i in range(0, len(points), _BLOCK)))


def lesions_3d(labels: np.ndarray, lesion_classes: Sequence[str],
               spacing: Optional[Tuple[float, float, float]],
               positions: Optional[np.ndarray] = None) -> Dict:
    """The 3-D lesions of a label volume.

    Args:
        labels: (N, H, W) uint8 lesion labels in display orientation (0 background, k + 1
            lesion class k).
        lesion_classes: the lesion class names.
        spacing: (row, column, slice) spacing in mm; ``None``: sizes in voxels only.
        positions: (N,) slice positions in mm (``None``: ``k * slice spacing``).
    Returns:
        ``{"connectivity": 26, "count": {class: n, "total": n}, "lesions": [...]}``, the lesions
        largest first, each ``{"class", "voxels", "ml", "slices": [first, last],
        "positions_mm": [first, last], "largest_diameter_mm"}`` (slice indices in display
        order; the diameter between voxel centres; mm and mL entries ``None`` without spacing).
    """
    structure = np.ones((3, 3, 3), bool)
    lesions: List[Dict] = []
    count: Dict[str, int] = {}
    z = None
    if spacing is not None:
        z = (np.asarray(positions, np.float64) if positions is not None
             else np.arange(labels.shape[0]) * float(spacing[2]))
    for k, name in enumerate(lesion_classes):
        components, n = ndimage.label(labels == k + 1, structure=structure)
        count[name] = int(n)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            mask = components[box] == index
            voxels = int(mask.sum())
            first, last = int(box[0].start), int(box[0].stop - 1)
            lesion = {"class": name, "voxels": voxels, "ml": None, "slices": [first, last],
                      "positions_mm": None, "largest_diameter_mm": None}
            if spacing is not None:
                surface = mask & ~ndimage.binary_erosion(mask, structure)
                kk, rr, cc = np.nonzero(surface)
                points = np.stack([z[kk + first], (rr + box[1].start) * float(spacing[0]),
                                   (cc + box[2].start) * float(spacing[1])], axis=1)
                lesion["ml"] = voxels * float(np.prod(spacing)) / 1000.0
                lesion["positions_mm"] = [float(z[first]), float(z[last])]
                lesion["largest_diameter_mm"] = largest_diameter(points)
            lesions.append(lesion)
    count["total"] = sum(count.values())
    lesions.sort(key=lambda d: -d["voxels"])
    return {"connectivity": 26, "count": count, "lesions": lesions}
