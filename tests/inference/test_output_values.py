"""Every number that predict writes (``report.json``, the study's and the run's ``slices.csv``,
``studies.csv``), checked against an independent computation: the model is replaced by a stub
whose slice probabilities and lesion masks are chosen here, the study is a synthetic CT volume
whose lungs (with vessels inside) and spacing are known. Also: the HU window's default against
the training slices' window, a study folder of another tool, and the leftovers of a kill during
a study folder's first write. Each test names the one-line slip it catches."""
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from detectron2.structures import Instances

from oneshot_d2.cli import predict as predict_cli
from oneshot_d2.config import load_config
from oneshot_d2.inference.outputs import REPORT_TOOL
from oneshot_d2.utils.temp_names import host_tag
from tests.bad_input import PREDICT, assert_one_error, run_tool, snapshot
from tests.common import AFFINITY_QUICK, dead_pid, run_forked

IMAGE_CLASSES = ["COVID-19", "CP", "Normal"]  # the negative class is the last one
LESION_CLASSES = ["GGO", "consolidation"]
N, SIZE = 10, 48
SPACING = (0.7, 0.8, 2.5)  # display rows, columns, slices (mm): all different
VOXEL_ML = 0.7 * 0.8 * 2.5 / 1000.0
# (COVID-19, CP, Normal) per slice: COVID-19's top-5 mean is 0.52, 3 of 10 slices are COVID-19
PROBS = np.array([[0.90, 0.05, 0.05], [0.80, 0.10, 0.10], [0.50, 0.45, 0.05],
                  [0.30, 0.20, 0.50], [0.10, 0.20, 0.70]] + [[0.05, 0.05, 0.90]] * 5,
                 dtype=np.float32)
LUNG_ROWS, LUNG_COLS = slice(10, 34), (slice(8, 22), slice(26, 40))  # 24 x 14 px each
VESSELS = ((slice(20, 23), slice(16, 19)), (slice(14, 17), slice(34, 37)))  # 3 x 3 px, +40 HU
LUNG_VOXELS = N * 2 * 24 * 14  # the vessels belong to the lung (holes filled)
# the stub's instances: (class, score, rows, columns, slices); the last one scores below
# PREDICT.LESION_SCORE_THRESH (0.5) and must be left out everywhere
INSTANCES = [(0, 0.9, slice(12, 16), slice(10, 14), range(2, 7)),  # 16 px on 5 slices
             (1, 0.7, slice(26, 29), slice(28, 33), range(3, 5)),  # 15 px on 2 slices
             (0, 0.3, slice(30, 33), slice(10, 13), range(N))]


def ct_volume() -> np.ndarray:
    """(N, H, W) HU in display orientation: air, a soft-tissue body, two lungs at -850 HU
    with a vessel (+40 HU) inside each."""
    hu = np.full((N, SIZE, SIZE), -1000.0, np.float32)
    hu[:, 4:44, 4:44] = 40.0
    for cols in LUNG_COLS:
        hu[:, LUNG_ROWS, cols] = -850.0
    for rows, cols in VESSELS:
        hu[:, rows, cols] = 40.0
    return hu


def expected_labels() -> np.ndarray:
    labels = np.zeros((N, SIZE, SIZE), np.uint8)
    for cls, score, rows, cols, slices in INSTANCES:
        if score >= 0.5:
            for k in slices:
                labels[k, rows, cols] = cls + 1
    return labels


class StubPredictor:
    """Stands for OneShotPredictor in tools/predict.py: the outputs above for every study."""

    def __init__(self, cfg, batch_size=8, **kwargs):
        self.cfg, self.batch_size = cfg, batch_size
        self.image_classes, self.lesion_classes = list(IMAGE_CLASSES), list(LESION_CLASSES)

    def predict(self, images):
        assert images.shape == (N, SIZE, SIZE) and images.dtype == np.uint8
        for k in range(N):
            kept = [(c, s, r, q) for c, s, r, q, sl in INSTANCES if k in sl]
            inst = Instances((SIZE, SIZE))
            masks = torch.zeros((len(kept), SIZE, SIZE), dtype=torch.bool)
            for i, (_, _, rows, cols) in enumerate(kept):
                masks[i, rows, cols] = True
            inst.pred_masks = masks
            inst.scores = torch.tensor([s for _, s, _, _ in kept], dtype=torch.float32)
            inst.pred_classes = torch.tensor([c for c, _, _, _ in kept], dtype=torch.int64)
            yield {"image_cls": PROBS[k].copy(), "instances": inst}


def write_nifti(path, hu, superior_first=False):
    """RAS+ NIfTI of display slices (N, H, W); ``superior_first``: slices stored top down."""
    data = hu.transpose(2, 1, 0)[::-1, ::-1, :]  # display -> RAS (x: right->left flipped)
    affine = np.diag([SPACING[1], SPACING[0], SPACING[2], 1.0])
    if superior_first:
        data = data[:, :, ::-1]
        affine[2, 2] = -SPACING[2]
        affine[2, 3] = SPACING[2] * (N - 1)
    img = nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return data


# The test volume covers 36 mm, a tenth of the phantom's field of view that the shipped config
# records: the stub must see the slices as they are, so the scale check (tested with the
# shipped settings in test_field_of_view) is off here.
SCALE_CHECK_OFF = ("PREDICT.TRAINED_FIELD_OF_VIEW_MM", "0.0")


def run_predict(monkeypatch, inputs, out, *opts):
    monkeypatch.setattr(predict_cli, "OneShotPredictor", StubPredictor)
    return run_tool(PREDICT, "--config-file", AFFINITY_QUICK, "--input", *map(str, inputs),
                    "--output", str(out), "--no-progress", *opts, *SCALE_CHECK_OFF)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def top_k_mean(column, k):
    return sum(sorted(column.tolist(), reverse=True)[:k]) / k


@pytest.fixture
def study_file(tmp_path):
    path = tmp_path / "chest.nii.gz"
    write_nifti(path, ct_volume())
    return path


# ---------------------------------------------------------------------------------------------
def test_slices_csv_values(monkeypatch, study_file, tmp_path):
    # catches: the predicted class of a slice not its argmax, probabilities in another class
    # order, a lesion below the score threshold counted or painted, areas in mm^2 with the
    # wrong pixel spacing (or the slice spacing), the run's table differing from the study's
    status, lines = run_predict(monkeypatch, [study_file], tmp_path / "out")
    assert status == 0, lines
    labels = expected_labels()
    rows = read_csv(tmp_path / "out" / "chest" / "slices.csv")
    assert rows == read_csv(tmp_path / "out" / "slices.csv")
    assert [int(r["slice_index"]) for r in rows] == list(range(N))
    for k, row in enumerate(rows):
        for c, name in enumerate(IMAGE_CLASSES):
            assert float(row[f"prob_{name}"]) == pytest.approx(float(PROBS[k, c]), abs=1e-6)
        assert row["predicted_class"] == ("COVID-19" if k < 3 else "Normal")
        for c, name in enumerate(LESION_CLASSES):
            area = int((labels[k] == c + 1).sum())
            count = sum(1 for cls, s, _, _, sl in INSTANCES if cls == c and s >= 0.5 and k in sl)
            assert int(row[f"lesions_{name}"]) == count
            assert int(row[f"area_px_{name}"]) == area
            assert float(row[f"area_mm2_{name}"]) == pytest.approx(area * 0.7 * 0.8, abs=1e-3)
        assert float(row["position_mm"]) == pytest.approx(k * SPACING[2], abs=1e-3)
    assert sum(int(r["area_px_GGO"]) for r in rows) == 5 * 16  # the 0.3 instance left out


def test_report_burden_and_patient_values(monkeypatch, study_file, tmp_path):
    # catches: volumes in mL with a wrong voxel volume (a spacing dropped or squared, / 100),
    # the per-slice volumes of another slice, the lung mask leaving the vessels out (holes not
    # filled), % of lung against the wrong denominator, the top-k mean over another k, the
    # negative class taken as index 0
    status, lines = run_predict(monkeypatch, [study_file], tmp_path / "out")
    assert status == 0, lines
    report = json.loads((tmp_path / "out" / "chest" / "report.json").read_text())
    assert report["tool"] == REPORT_TOOL
    assert report["geometry"]["spacing_mm"] == pytest.approx(list(SPACING))
    labels = expected_labels()
    burden = report["burden"]
    voxels = {name: int((labels == c + 1).sum()) for c, name in enumerate(LESION_CLASSES)}
    assert voxels == {"GGO": 80, "consolidation": 30}
    for name in LESION_CLASSES:
        assert burden["voxels"][name] == voxels[name]
        assert burden["ml"][name] == pytest.approx(voxels[name] * VOXEL_ML, rel=1e-6)
        assert burden["percent_of_lung"][name] == pytest.approx(
            100.0 * voxels[name] / LUNG_VOXELS, rel=1e-6)
    assert burden["ml"]["total"] == pytest.approx(110 * VOXEL_ML, rel=1e-6)
    assert burden["lung_voxels"] == LUNG_VOXELS
    assert burden["lung_ml"] == pytest.approx(LUNG_VOXELS * VOXEL_ML, rel=1e-6)
    assert burden["per_slice_ml"] == pytest.approx(
        [float((labels[k] > 0).sum()) * VOXEL_ML for k in range(N)], rel=1e-6)
    patient = report["patient"]
    cfg = load_config(AFFINITY_QUICK)
    k = cfg.PREDICT.PATIENT_TOP_K
    assert (k, cfg.PREDICT.PATIENT_THRESH) == (5, 0.5)  # what ships; the numbers below use it
    for c, name in enumerate(IMAGE_CLASSES):
        assert patient["scores"][name] == pytest.approx(top_k_mean(PROBS[:, c], k), abs=1e-6)
    assert patient["scores"]["COVID-19"] == pytest.approx(0.52, abs=1e-6)
    assert (patient["class"], patient["negative_class"]) == ("COVID-19", "Normal")


def test_burden_per_lung_and_3d_lesions(monkeypatch, study_file, tmp_path):
    # catches: left and right swapped (display columns run from the patient's right to the
    # left), a lung's lesions or lung volume counted in the other, % of one lung against both
    # lungs' volume; 3-D lesions not joined across slices, a slice range or a diameter off
    status, lines = run_predict(monkeypatch, [study_file], tmp_path / "out")
    assert status == 0, lines
    report = json.loads((tmp_path / "out" / "chest" / "report.json").read_text())
    per_lung = report["burden"]["per_lung"]
    side_voxels = LUNG_VOXELS // 2
    # the GGO lesion lies in the image's left lung (columns 8-21): the patient's right
    for side, name, voxels in (("right", "GGO", 80), ("left", "consolidation", 30)):
        other = "consolidation" if name == "GGO" else "GGO"
        assert per_lung[side]["voxels"] == {name: voxels, other: 0, "total": voxels}
        assert per_lung[side]["lung_voxels"] == side_voxels
        assert per_lung[side]["ml"][name] == pytest.approx(voxels * VOXEL_ML, rel=1e-6)
        assert per_lung[side]["lung_ml"] == pytest.approx(side_voxels * VOXEL_ML, rel=1e-6)
        assert per_lung[side]["percent_of_lung"][name] == pytest.approx(
            100.0 * voxels / side_voxels, rel=1e-6)
    lesions = report["lesions_3d"]
    assert lesions["count"] == {"GGO": 1, "consolidation": 1, "total": 2}
    ggo, cons = lesions["lesions"]  # largest first
    assert (ggo["class"], ggo["voxels"], ggo["slices"]) == ("GGO", 80, [2, 6])
    assert (cons["class"], cons["voxels"], cons["slices"]) == ("consolidation", 30, [3, 4])
    assert ggo["ml"] == pytest.approx(80 * VOXEL_ML, rel=1e-6)
    # 4 x 4 px on 5 slices: corner to corner, between voxel centres
    assert ggo["largest_diameter_mm"] == pytest.approx(
        np.sqrt((3 * SPACING[0]) ** 2 + (3 * SPACING[1]) ** 2 + (4 * SPACING[2]) ** 2))
    assert cons["largest_diameter_mm"] == pytest.approx(
        np.sqrt((2 * SPACING[0]) ** 2 + (4 * SPACING[1]) ** 2 + SPACING[2] ** 2))
    assert ggo["positions_mm"][1] - ggo["positions_mm"][0] == pytest.approx(4 * SPACING[2])


@pytest.mark.parametrize("opts, expected", [
    (("PREDICT.PATIENT_THRESH", "0.53"), "Normal"),  # 0.52 < 0.53
    (("PREDICT.PATIENT_TOP_K", "3", "PREDICT.PATIENT_THRESH", "0.7"), "COVID-19"),  # 0.733
    (("PREDICT.PATIENT_TOP_K_MM", "7.4", "PREDICT.PATIENT_THRESH", "0.7"), "COVID-19"),  # k 3
    (("PREDICT.PATIENT_RULE", "fraction", "PREDICT.PATIENT_MIN_FRACTION", "0.3"), "COVID-19"),
    (("PREDICT.PATIENT_RULE", "fraction", "PREDICT.PATIENT_MIN_FRACTION", "0.31"), "Normal"),
    (("PREDICT.NEGATIVE_CLASS", "COVID-19"), "Normal"),  # Normal's 0.9 is then the positive
])
def test_patient_rule_parameters_reach_the_result(monkeypatch, study_file, tmp_path, opts,
                                                  expected):
    # catches: PATIENT_THRESH / TOP_K / MIN_FRACTION / NEGATIVE_CLASS not read from the config,
    # the fraction rule's bar compared with > instead of >= (3 of 10 slices at 0.3)
    status, lines = run_predict(monkeypatch, [study_file], tmp_path / "out", *opts)
    assert status == 0, lines
    report = json.loads((tmp_path / "out" / "chest" / "report.json").read_text())
    assert report["patient"]["class"] == expected
    if "fraction" in opts:
        assert report["patient"]["scores"] == pytest.approx(
            {"COVID-19": 0.3, "CP": 0.0, "Normal": 0.7})


def test_studies_csv_values(monkeypatch, study_file, tmp_path):
    # catches: a studies.csv column taken from another key of the report (scores, mL, % of
    # lung, lung volume), or rounded to fewer digits than documented
    # and the studies that fail are listed, the others complete: a study that cannot be read,
    # a file that is no scan, a missing path
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    (tmp_path / "notes.txt").write_text("not a scan")
    status, lines = run_predict(monkeypatch, [study_file, bad, tmp_path / "notes.txt",
                                              tmp_path / "missing"], tmp_path / "out")
    assert status == 2 and len(lines) == 3 and not any("Traceback" in x for x in lines)
    for needle in ("broken.nii.gz", "notes.txt", "missing"):
        assert sum(needle in line and line.startswith("predict: error:") for line in lines) == 1
    rows = read_csv(tmp_path / "out" / "studies.csv")
    assert sorted(r["status"] for r in rows) == ["error"] * 3 + ["ok"]
    rows = {r["study"]: r for r in rows}
    ok, err = rows["chest"], rows["broken"]
    assert (ok["status"], ok["error"], err["status"]) == ("ok", "", "error")
    # the row names the input by its position, not its path (no identifier in a path)
    assert err["error"].startswith("input 2: unreadable NIfTI") and err["patient_class"] == ""
    assert int(ok["slices"]) == N and ok["patient_class"] == "COVID-19"
    for c, name in enumerate(IMAGE_CLASSES):
        assert float(ok[f"score_{name}"]) == pytest.approx(top_k_mean(PROBS[:, c], 5), abs=1e-6)
    for name, vox in (("GGO", 80), ("consolidation", 30), ("total", 110)):
        assert float(ok[f"lesion_ml_{name}"]) == pytest.approx(vox * VOXEL_ML, abs=1e-4)
        assert float(ok[f"lesion_percent_of_lung_{name}"]) == pytest.approx(
            100 * vox / LUNG_VOXELS, abs=1e-4)
    assert float(ok["lung_ml"]) == pytest.approx(LUNG_VOXELS * VOXEL_ML, abs=0.01)


def test_superior_first_nifti_gives_the_same_results_and_labels_in_its_layout(
        monkeypatch, tmp_path):
    # catches: a NIfTI stored superior -> inferior shown to the model upside down (the
    # per-slice rows of slice k would be those of slice N-1-k), or the lesion label volume
    # written in display order instead of the input's
    hu = ct_volume()
    stored = write_nifti(tmp_path / "down.nii.gz", hu, superior_first=True)
    write_nifti(tmp_path / "up.nii.gz", hu)
    status, lines = run_predict(monkeypatch, [tmp_path / "down.nii.gz", tmp_path / "up.nii.gz"],
                                tmp_path / "out", "--save-nifti")
    assert status == 0, lines
    down = read_csv(tmp_path / "out" / "down" / "slices.csv")
    up = read_csv(tmp_path / "out" / "up" / "slices.csv")
    drop = ("study", "slice")
    assert [{k: v for k, v in r.items() if k not in drop} for r in down] == \
        [{k: v for k, v in r.items() if k not in drop} for r in up]
    assert [r["slice"] for r in down] == [f"slice {N - 1 - k}" for k in range(N)]
    out = nib.load(str(tmp_path / "out" / "down" / "lesions.nii.gz"))
    assert out.shape == stored.shape
    np.testing.assert_allclose(out.affine, nib.load(str(tmp_path / "down.nii.gz")).affine)
    expected = expected_labels().transpose(2, 1, 0)[::-1, ::-1, ::-1]  # display -> stored
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)


def test_training_window_is_the_default_hu_window(tmp_path):
    # catches: INPUT.HU_WINDOW's default moved off the window the training slices were made
    # with (a study would reach the model brighter or darker than every training slice)
    import cv2

    from oneshot_d2.data.phantom_dataset import PhantomSpec, write_phantom_dataset
    from oneshot_d2.inference.study import Study
    from oneshot_d2.inference.study_prediction import model_slices

    root = tmp_path / "ph"
    write_phantom_dataset(str(root), PhantomSpec(size=64, seg_train=2, seg_test=1, cls_train=0,
                                                 cls_val=0, cls_test=0, save_hu=True,
                                                 slices_per_patient=1), min_area=None)
    seg = root / "segmentation"
    names = sorted(os.listdir(seg / "hu"))
    assert names
    from detectron2.config import get_cfg

    from oneshot_d2.config import add_oneshot_config

    window = tuple(add_oneshot_config(get_cfg()).INPUT.HU_WINDOW)
    assert tuple(load_config(AFFINITY_QUICK).INPUT.HU_WINDOW) == window
    for name in names:
        hu = cv2.imread(str(seg / "hu" / name), cv2.IMREAD_UNCHANGED).astype(np.float32) - 1024
        study = Study("s", "s", "image", hu[None], True, None, None, ["0"], np.eye(4))
        seen = model_slices(study, window)[0].astype(np.float32)
        trained = cv2.imread(str(seg / "imgs" / (name[:-4] + ".jpg")), cv2.IMREAD_GRAYSCALE)
        # JPEG's loss: a few grey levels; a window 100 HU off moves the lung by ~17 levels
        assert np.abs(seen - trained).mean() < 2.0, name


@pytest.mark.parametrize("report", [{"tool": "another viewer", "x": 1}, None])
def test_a_folder_this_tool_did_not_write_is_never_replaced(monkeypatch, study_file, tmp_path,
                                                            report):
    # catches: a study folder taken as this tool's because it holds a report.json (of any
    # tool), or because it is there at all
    folder = tmp_path / "out" / "chest"
    folder.mkdir(parents=True)
    if report is not None:
        (folder / "report.json").write_text(json.dumps(report))
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(folder)
    status, lines = run_predict(monkeypatch, [study_file], tmp_path / "out")
    assert_one_error(status, lines, "predict", "refusing to replace", exact=False)
    assert snapshot(folder) == before


def test_a_folder_this_tool_wrote_is_replaced(monkeypatch, study_file, tmp_path):
    # catches: the tool refusing its own earlier output (a second run over the first), or
    # leaving the previous version or temporary folders beside the new one
    out = tmp_path / "out"
    assert run_predict(monkeypatch, [study_file], out)[0] == 0
    (out / "chest" / "stale.txt").write_text("from the first run")
    assert run_predict(monkeypatch, [study_file], out)[0] == 0
    assert sorted(os.listdir(out)) == ["chest", "slices.csv", "studies.csv"]
    assert not (out / "chest" / "stale.txt").exists()


def test_a_killed_first_write_is_not_recovered_as_a_result(monkeypatch, study_file, tmp_path):
    # catches: the recovery putting a killed first write's temporary folder in place (no
    # report.json: incomplete) instead of deleting it; the next run would then refuse the
    # folder or, worse, a reader would take it for a result
    out = tmp_path / "out"
    leftover = out / f"chest.tmp-{host_tag()}-{dead_pid()}-abcd1234"
    leftover.mkdir(parents=True)
    (leftover / "slices.csv").write_text("study,slice_index\nchest,0\n")  # killed after this
    status, lines = run_predict(monkeypatch, [study_file], out)
    assert status == 0, lines
    assert sorted(os.listdir(out)) == ["chest", "slices.csv", "studies.csv"]
    report = json.loads((out / "chest" / "report.json").read_text())
    assert report["tool"] == REPORT_TOOL and len(read_csv(out / "chest" / "slices.csv")) == N


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["predict-swap"])
def test_killed_while_replacing_leaves_a_complete_study(monkeypatch, study_file, tmp_path,
                                                        stage):
    # kill -9 between the renames of a study folder (a forked process, the stub model): catches
    # the next run not putting the complete folder back (or putting back half of one). The
    # other kill point, old folder not yet deleted, is the same utils.file_io.replace_folder
    # as prepare_phantom's (tests/data/test_phantom_overwrite.py).
    out = tmp_path / "out"
    assert run_predict(monkeypatch, [study_file], out)[0] == 0
    status = run_forked(lambda: run_predict(monkeypatch, [study_file], out), tmp_path,
                        kill_at=stage)
    assert status == -9
    assert not (out / "chest").exists()  # killed between the two renames
    status, lines = run_predict(monkeypatch, [study_file], out)
    assert status == 0, lines
    assert sorted(os.listdir(out)) == ["chest", "slices.csv", "studies.csv"]
    report = json.loads((out / "chest" / "report.json").read_text())
    assert report["tool"] == REPORT_TOOL and len(read_csv(out / "chest" / "slices.csv")) == N
