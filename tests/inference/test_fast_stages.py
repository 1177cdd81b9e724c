"""The study pipeline's whole-volume stages equal their slice-by-slice definitions: the lung
mask (labels and hole filling in each slice, 3-D components) and the lung window."""
import numpy as np
import pytest
from scipy import ndimage

from oneshot_d2.data.phantom_study import render_phantom_study
from oneshot_d2.data.transforms import lung_window
from oneshot_d2.inference.lung_mask import lung_mask


def _drop_border_regions_2d(air):
    labels, count = ndimage.label(air, structure=np.ones((3, 3), bool))
    if count == 0:
        return air
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = np.ones(count + 1, bool)
    keep[border] = False
    keep[0] = False
    return keep[labels]


def lung_mask_by_slice(hu, hu_thresh=-320.0, second_fraction=0.1):
    """The lung mask's definition (module docstring), one slice at a time with SciPy's 2-D
    label and binary_fill_holes."""
    inside = np.stack([_drop_border_regions_2d(s < hu_thresh) for s in hu])
    labels, count = ndimage.label(inside)
    if count == 0:
        return inside
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes)
    kept = [order[0] + 1]
    if count > 1 and sizes[order[1]] >= second_fraction * sizes[order[0]]:
        kept.append(order[1] + 1)
    out = np.zeros(inside.shape, bool)
    for k in kept:
        out |= np.stack([ndimage.binary_fill_holes(s) for s in labels == k])
    return out


def _cases():
    rng = np.random.default_rng(0)
    phantom = render_phantom_study(2, num_slices=12, size=128, seed=1).hu
    smooth = ndimage.gaussian_filter(rng.normal(size=(10, 80, 80)), 2) * 3000 - 300
    ring = np.full((3, 40, 40), 40.0)  # a slice-wide air ring: its border part goes, no hole
    ring[:, 5:35, 5:35] = -900.0
    ring[:, 10:30, 10:30] = 40.0
    ring[1, 18:22, 18:22] = -900.0  # air inside tissue inside lung: a hole in slice 1 only
    return [phantom, smooth, ring, np.zeros((2, 16, 16)), np.full((2, 16, 16), -1000.0)]


@pytest.mark.parametrize("case", range(5))
def test_lung_mask_equals_its_slice_by_slice_definition(case):
    """Catches a border region or a hole taken across slices (3-D structure in the in-plane
    steps), or 4- and 8-connectivity swapped."""
    hu = _cases()[case]
    np.testing.assert_array_equal(lung_mask(hu), lung_mask_by_slice(hu))


def test_lung_window_equals_numpy_rounding():
    """float32 arithmetic, round half to even, clipping: equal to the NumPy formula for any
    input dtype, on values exactly half-way between two grey levels too."""
    rng = np.random.default_rng(1)
    width, level = 1500.0, -600.0
    lo = level - width / 2.0
    half_way = (np.arange(256) + 0.5) * (width / 255.0) + lo
    for hu in (rng.uniform(-2000, 1500, (3, 32, 32)).astype(np.float32),
               half_way.astype(np.float32), rng.integers(-3000, 3000, (2, 16, 16), np.int16),
               rng.uniform(-2000, 1500, (2, 8, 8))):
        expected = np.clip(np.rint((np.asarray(hu, np.float32) - lo) * (255.0 / width)), 0,
                           255).astype(np.uint8)
        got = lung_window(hu, width, level)
        assert got.dtype == np.uint8 and got.shape == hu.shape
        np.testing.assert_array_equal(got, expected)


def test_burden_counts_equal_bincount_and_refuse_unknown_labels():
    from oneshot_d2.inference.report import lesion_burden

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (3, 20, 20)).astype(np.uint8)
    counts = np.bincount(labels.ravel(), minlength=3)
    burden = lesion_burden(labels, ["ggo", "cons"], (1.0, 1.0, 2.0))
    assert burden["voxels"] == {"ggo": counts[1], "cons": counts[2], "total": counts[1:].sum()}
    assert lesion_burden(labels[:0], ["ggo", "cons"], None)["voxels"]["total"] == 0
    with pytest.raises(ValueError, match="label 2 but only 1 lesion classes"):
        lesion_burden(labels, ["lesion"], None)


def test_lung_sides_equal_their_definition():
    """The two largest components (bincount) and the mean column of each one's voxels."""
    from oneshot_d2.inference.lung_mask import lung_sides

    lung = lung_mask(render_phantom_study(2, num_slices=10, size=128, seed=3).hu)
    labels, _ = ndimage.label(lung)
    sizes = np.bincount(labels.ravel())[1:]
    first, second = (int(i) + 1 for i in np.argsort(-sizes)[:2])
    a, b = labels == first, labels == second
    col_a, col_b = np.nonzero(a)[2].mean(), np.nonzero(b)[2].mean()
    right, left, midline = lung_sides(lung)
    assert col_a != col_b
    np.testing.assert_array_equal(right, a if col_a < col_b else b)
    np.testing.assert_array_equal(left, b if col_a < col_b else a)
    assert midline == pytest.approx((col_a + col_b) / 2, abs=1e-9)
