"""3-D lesions (connected components across slices) and the per-lung burden, on label volumes
built here with known answers."""
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from oneshot_d2.inference.lesions3d import largest_diameter, lesions_3d
from oneshot_d2.inference.report import lesion_burden

SPACING = (0.7, 0.8, 2.5)


def test_components_join_across_slices_by_corners_and_keep_classes_apart():
    # catches: 6-connectivity (a diagonal step between slices splits a lesion), classes merged
    # into one component, counts or slice ranges of another lesion
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1, 2, 2] = labels[2, 3, 3] = labels[3, 4, 4] = 1  # one GGO lesion, corner to corner
    labels[1, 10:12, 10:13] = 1  # a second GGO lesion, one slice
    labels[2, 4, 3] = 2  # consolidation touching the first lesion: its own lesion
    out = lesions_3d(labels, ["GGO", "consolidation"], SPACING)
    assert out["count"] == {"GGO": 2, "consolidation": 1, "total": 3}
    first, second, third = out["lesions"]
    assert (first["class"], first["voxels"], first["slices"]) == ("GGO", 6, [1, 1])
    assert (second["class"], second["voxels"], second["slices"]) == ("GGO", 3, [1, 3])
    assert third["class"] == "consolidation" and third["slices"] == [2, 2]
    diagonal = np.sqrt((2 * SPACING[0]) ** 2 + (2 * SPACING[1]) ** 2 + (2 * SPACING[2]) ** 2)
    assert second["largest_diameter_mm"] == pytest.approx(diagonal)
    assert first["largest_diameter_mm"] == pytest.approx(np.hypot(SPACING[0], 2 * SPACING[1]))
    assert third["largest_diameter_mm"] == 0.0 and third["ml"] == pytest.approx(
        np.prod(SPACING) / 1000.0)


def test_slice_positions_and_no_spacing():
    # catches: positions ignored (uneven slices), sizes invented without a spacing
    labels = np.zeros((3, 5, 5), np.uint8)
    labels[0, 1, 1] = labels[2, 1, 1] = labels[1, 1, 1] = 1
    positions = np.array([-10.0, -7.0, 0.0])
    out = lesions_3d(labels, ["lesion"], SPACING, positions)
    (lesion,) = out["lesions"]
    assert lesion["positions_mm"] == [-10.0, 0.0] and lesion["largest_diameter_mm"] == 10.0
    bare = lesions_3d(labels, ["lesion"], None)["lesions"][0]
    assert bare["voxels"] == 3 and bare["ml"] is bare["largest_diameter_mm"] is None


def test_large_lesion_diameter_equals_brute_force(monkeypatch):
    # catches: the convex-hull shortcut (lesions with many surface points) giving another
    # distance than all pairs of voxels, and surface points that miss an extreme voxel
    import oneshot_d2.inference.lesions3d as module

    monkeypatch.setattr(module, "_HULL_ABOVE", 50)
    k, r, c = np.mgrid[0:12, 0:30, 0:30]
    blob = ((k - 6) / 5.0) ** 2 + ((r - 15) / 13.0) ** 2 + ((c - 14) / 11.5) ** 2 <= 1.0
    (lesion,) = lesions_3d(blob.astype(np.uint8), ["lesion"], SPACING)["lesions"]
    kk, rr, cc = np.nonzero(blob)
    every_voxel = np.stack([kk * SPACING[2], rr * SPACING[0], cc * SPACING[1]], axis=1)
    assert lesion["largest_diameter_mm"] == pytest.approx(pdist(every_voxel).max())
    flat = np.stack([np.zeros(60), np.arange(60) % 7, np.arange(60) // 7], axis=1)  # one plane
    assert largest_diameter(flat) == pytest.approx(pdist(flat).max())
    assert largest_diameter(np.zeros((1, 3))) == 0.0


def test_per_lung_burden_splits_by_the_two_lungs_and_the_midline():
    # catches: sides swapped, a lesion outside both lung masks dropped or put on the wrong
    # side, a one-component lung split anyway
    lung = np.zeros((2, 10, 20), bool)
    lung[:, 2:8, 1:7] = True  # image columns 1-6: the patient's right lung
    lung[:, 2:8, 12:19] = True  # columns 12-18: the left lung
    labels = np.zeros(lung.shape, np.uint8)
    labels[0, 3, 2] = 1  # in the right lung
    labels[1, 3, 14] = 2  # in the left lung
    labels[0, 9, 11] = 2  # outside both, right of the midline column (9.25): left
    burden = lesion_burden(labels, ["GGO", "consolidation"], SPACING, lung)
    right, left = burden["per_lung"]["right"], burden["per_lung"]["left"]
    assert right["voxels"] == {"GGO": 1, "consolidation": 0, "total": 1}
    assert left["voxels"] == {"GGO": 0, "consolidation": 2, "total": 2}
    assert right["lung_voxels"] == 2 * 6 * 6 and left["lung_voxels"] == 2 * 6 * 7 + 1
    assert burden["lung_voxels"] == right["lung_voxels"] + left["lung_voxels"]
    joined = lung.copy()
    joined[:, 4, 6:13] = True  # the two lungs touch: one component
    assert lesion_burden(labels, ["GGO", "consolidation"], SPACING, joined)["per_lung"] is None


def test_lungs_touching_by_a_corner_stay_two_lungs():
    # catches: holes filled on the joined mask (its background is 4-connected): two lungs
    # touching corner to corner in front of and behind the mediastinum enclose it, the
    # mediastinum becomes lung and the per-lung burden is lost
    from oneshot_d2.inference.lung_mask import lung_mask, lung_sides

    hu = np.full((5, 60, 60), 40.0, np.float32)
    hu[:, :2, :] = hu[:, -2:, :] = hu[:, :, :2] = hu[:, :, -2:] = -1000.0
    hu[:, 10:50, 8:28] = hu[:, 10:50, 32:52] = -850.0  # mediastinum: columns 28-31
    hu[2, 10, 28:30] = hu[2, 9:11, 31] = hu[2, 9, 30] = -850.0  # corner contact in front
    hu[2, 49, 28:30] = hu[2, 49:51, 31] = hu[2, 50, 30] = -850.0  # and behind
    mask = lung_mask(hu)
    assert not mask[2, 20:40, 28:32].any()  # the mediastinum is no lung
    assert int(mask.sum()) == int((hu[:, 2:-2, 2:-2] < -320).sum())
    right, left, _ = lung_sides(mask)  # corner contact does not join 6-connected components
    assert right[:, 20:40, 8:28].all() and left[:, 20:40, 32:52].all()
