"""Predict: OneShotPredictor (same outputs as --eval-only, batch-size independent), the report
arithmetic on phantom ground truth (burden in mL and % of lung, patient rule), the classical lung
mask, and tools/predict.py end to end on a phantom DICOM series and NIfTI volume."""
import contextlib
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from oneshot_d2.cli import run_cli
from oneshot_d2.config import load_config
from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.data.io import read_gray
from oneshot_d2.data.phantom import COVID, NORMAL
from oneshot_d2.data.phantom_study import (
    render_phantom_study,
    write_dicom_series,
    write_nifti_volume,
)
from oneshot_d2.data.transforms import lung_window
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.inference import (
    OneShotPredictor,
    Study,
    lesion_burden,
    lung_mask,
    patient_result,
)
from oneshot_d2.inference.report import lesion_label_map, negative_class_index
from oneshot_d2.inference.study_prediction import model_slices
from tests.common import AFFINITY_QUICK, REPO, SMALL_HEADS, TINY, make_cfg, seeded_model

PREDICT = os.path.join(REPO, "tools", "predict.py")


# ------------------------------------------------------------------------------------------
# report arithmetic on ground truth
@pytest.fixture(scope="module")
def covid_study():
    return render_phantom_study(COVID, num_slices=5, size=128, seed=3, slice_spacing_mm=2.5)


def test_burden_equals_phantom_ground_truth(covid_study):
    """GGO / consolidation volume in mL and % of lung from the phantom's own masks: catches a
    wrong spacing factor (mm^3 -> mL), a class shifted by one, or the lung taken without its
    lesions."""
    mask, (sr, sc, ss) = covid_study.mask, covid_study.spacing
    labels = np.zeros_like(mask)
    labels[mask == 2], labels[mask == 3] = 1, 2
    burden = lesion_burden(labels, ["GGO", "consolidation"], covid_study.spacing, mask == 1)
    voxel_ml = sr * sc * ss / 1000.0
    ggo, cons, lung = (int((mask == v).sum()) for v in (2, 3, 1))
    assert ggo > 0 and cons > 0
    assert burden["ml"]["GGO"] == pytest.approx(ggo * voxel_ml, rel=1e-12)
    assert burden["ml"]["consolidation"] == pytest.approx(cons * voxel_ml, rel=1e-12)
    assert burden["ml"]["total"] == pytest.approx((ggo + cons) * voxel_ml, rel=1e-12)
    # the phantom's lung (label 1) excludes its lesions: the burden adds them back
    assert burden["lung_ml"] == pytest.approx((lung + ggo + cons) * voxel_ml, rel=1e-12)
    assert burden["percent_of_lung"]["GGO"] == pytest.approx(100 * ggo / (lung + ggo + cons))
    assert burden["percent_of_lung"]["total"] == pytest.approx(
        100 * (ggo + cons) / (lung + ggo + cons))


def test_burden_without_spacing_or_lung_reports_voxels_only():
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, :2, :2] = 1
    burden = lesion_burden(labels, ["lesion"], None, None)
    assert burden == {"voxels": {"lesion": 4, "total": 4}}


def test_classical_lung_mask_matches_the_phantom_lungs(covid_study):
    """Dice with the phantom's lungs (+ lesions) > 0.9; a threshold with the wrong sign, or the
    air around the body kept, drops it far below."""
    truth = covid_study.mask > 0
    found = lung_mask(covid_study.hu) | (covid_study.mask >= 2)
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.9
    normal = render_phantom_study(NORMAL, num_slices=3, size=128, seed=4)
    found = lung_mask(normal.hu)
    truth = normal.mask > 0
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.9
    assert not found[:, 0, :].any() and not found[:, :, 0].any()  # outside air removed


def test_lesion_label_map_highest_score_wins_and_threshold():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True   # class 0, score 0.9
    masks[1, 1:3] = True  # class 1, score 0.6: overlaps row 1 with a better instance
    masks[2, 3] = True    # class 1, score 0.2: below the threshold
    labels = lesion_label_map(masks, np.array([0, 1, 1]), np.array([0.9, 0.6, 0.2]), 0.5)
    assert labels[:2].tolist() == [[1] * 4] * 2
    assert labels[2].tolist() == [2] * 4
    assert labels[3].tolist() == [0] * 4


def test_patient_rule_top_k_mean():
    names = ["Normal", "CP", "COVID-19"]
    probs = np.array([[0.9, 0.05, 0.05]] * 6 + [[0.1, 0.1, 0.8], [0.2, 0.1, 0.7]])
    top2 = patient_result(probs, names, "top_k_mean", top_k=2, thresh=0.5)
    assert top2["class"] == "COVID-19"
    assert top2["scores"]["COVID-19"] == pytest.approx(0.75)
    assert top2["scores"]["Normal"] == pytest.approx(0.9)  # high, but it is the negative class
    top4 = patient_result(probs, names, "top_k_mean", top_k=4, thresh=0.5)
    assert top4["scores"]["COVID-19"] == pytest.approx((0.8 + 0.7 + 0.05 + 0.05) / 4)
    assert top4["class"] == "Normal"  # 0.4 < 0.5
    assert patient_result(probs, names, top_k=50)["top_k"] == 8  # k capped at N


def test_patient_rule_top_k_in_mm_agrees_on_thin_and_thick_slices():
    # catches: k counted in slices when PATIENT_TOP_K_MM is set (a thin-slice series of the
    # patient below would be COVID-19 and its thick-slice series Normal), k not rounded from the
    # spacing, the option applied without a known spacing
    names = ["Normal", "COVID-19"]
    results = {}
    for spacing, n in ((5.0, 12), (1.25, 45)):  # one phantom patient, 55 mm of scan, twice
        study = render_phantom_study(COVID, num_slices=n, size=64, seed=1,
                                     slice_spacing_mm=spacing)
        position = np.arange(n) * spacing
        lesion = ((study.mask == 2) | (study.mask == 3)).reshape(n, -1).any(axis=1)
        lesion &= (position >= 25.0) & (position < 35.0)  # a 10 mm focus: 2 or 8 slices
        covid = np.where(lesion, 0.9, 0.05)
        probs = np.stack([1.0 - covid, covid], axis=1)
        by_slices = patient_result(probs, names, top_k=5, thresh=0.5)
        by_mm = patient_result(probs, names, top_k=5, thresh=0.5, top_k_mm=25.0,
                               slice_spacing=spacing)
        results[spacing] = (int(lesion.sum()), by_slices["class"], by_mm["class"],
                            by_mm["top_k"], by_mm["scores"]["COVID-19"])
    assert results[5.0][:4] == (2, "Normal", "Normal", 5)
    assert results[1.25][:4] == (8, "COVID-19", "Normal", 20)
    assert results[5.0][4] == pytest.approx(results[1.25][4])  # (2 x 0.9 + 3 x 0.05) / 5
    unknown = patient_result(np.full((6, 2), 0.5), names, top_k=3, top_k_mm=25.0)
    assert unknown["top_k"] == 3 and unknown["top_k_mm"] is None
    half = patient_result(np.full((9, 2), 0.5), names, top_k_mm=12.5, slice_spacing=5.0)
    assert half["top_k"] == 3  # 2.5 slices: halves round up


def test_patient_rule_fraction_and_negative_class():
    names = ["NonCOVID", "COVID"]
    probs = np.array([[0.6, 0.4]] * 9 + [[0.3, 0.7]])
    assert patient_result(probs, names, "fraction", min_fraction=0.1)["class"] == "COVID"
    assert patient_result(probs, names, "fraction", min_fraction=0.2)["class"] == "NonCOVID"
    assert negative_class_index(names) == 0
    assert negative_class_index(["COVID-19", "normal"]) == 1
    assert negative_class_index(["a", "b"]) is None
    assert patient_result(probs, ["a", "b"], top_k=1)["class"] == "b"  # no negative: argmax
    with pytest.raises(Exception, match="NEGATIVE_CLASS"):
        negative_class_index(names, "healthy")


# ------------------------------------------------------------------------------------------
# predictor
@pytest.fixture(scope="module")
def cfg(phantom_root):
    register_cncb_layout(phantom_root, "pr")
    return make_cfg(AFFINITY_QUICK, *TINY, *SMALL_HEADS, "DATASETS.TRAIN", "('pr_seg_train',)",
                    "DATASETS.TRAIN_CLS", "('pr_cls_train',)",
                    "DATASETS.TEST", "('pr_seg_test', 'pr_cls_test')")


@pytest.fixture(scope="module")
def weights(cfg, tmp_path_factory):
    """A complete checkpoint of a seeded (untrained) model, classification branch copied."""
    model = seeded_model(cfg, 5)
    model.roi_heads.copy_seg_to_cls()
    path = str(tmp_path_factory.mktemp("ckpt") / "model.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def predictor(cfg, weights):
    c = cfg.clone()
    c.MODEL.WEIGHTS = weights
    return OneShotPredictor(c, batch_size=8)


def test_predictor_equals_eval_only_path(cfg, weights):
    """The test loader of --eval-only (its mapper reads the file, resizes, the model
    normalises) and the predictor on the same files give identical image_cls: catches a
    different resize, channel order or normalisation in the predictor."""
    c = cfg.clone()
    c.MODEL.WEIGHTS = weights
    model = OneShotTrainer.build_model(c)
    from oneshot_d2.checkpoint import AtomicCheckpointer

    AtomicCheckpointer(model).load(weights)
    model.eval()
    loader = OneShotTrainer.build_test_loader(c, "pr_cls_test")
    ref, files = [], []
    with torch.no_grad():
        for batch in loader:
            for x, out in zip(batch, model(batch)):
                ref.append(out)
                files.append(x["file_name"])
    # batch 1 as the test loader: bit-identical (batches of 8: within 1e-6, next test), with
    # the model in the loader's memory format (channels-last: the test after the next)
    thresh = float(np.median(np.concatenate([r["instances"].scores.numpy() for r in ref])))
    c.PREDICT.CHANNELS_LAST = False
    got = OneShotPredictor(c, batch_size=1, lesion_score_thresh=thresh)(
        [read_gray(f) for f in files])
    assert len(got) == len(ref) >= 3
    kept = 0
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g["image_cls"], r["image_cls"].numpy())
        # lesions: exactly the --eval-only detections scoring >= the threshold
        high = r["instances"][r["instances"].scores >= thresh]
        assert torch.equal(g["instances"].pred_boxes.tensor, high.pred_boxes.tensor)
        assert torch.equal(g["instances"].pred_masks, high.pred_masks)
        kept += len(high)
    assert kept > 0


@pytest.mark.slow
def test_batch_size_does_not_change_outputs(cfg, weights, predictor, covid_study):
    """Batch 1 vs 8: the same outputs up to float32 rounding (measured: probabilities within
    3e-8; the matrix products run over all RoIs of the batch, so their blocking differs).
    Catches slices mixed up within a batch, or a batch-dependent normalisation."""
    images = lung_window(covid_study.hu)
    c = cfg.clone()
    c.MODEL.WEIGHTS = weights
    one = OneShotPredictor(c, batch_size=1)(images)
    eight = predictor(images)
    for a, b in zip(one, eight):
        np.testing.assert_allclose(a["image_cls"], b["image_cls"], rtol=0, atol=1e-6)
        assert len(a["instances"]) == len(b["instances"])
        torch.testing.assert_close(a["instances"].pred_boxes.tensor,
                                   b["instances"].pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(a["image_cls_boxes"], b["image_cls_boxes"], rtol=1e-4,
                                   atol=1e-3)


def test_channels_last_gives_the_same_predictions(cfg, weights, predictor, covid_study):
    """PREDICT.CHANNELS_LAST (the default) against the model in its usual memory format: the
    same lesions and slice probabilities up to float rounding (measured within 1e-6)."""
    assert predictor.cfg.PREDICT.CHANNELS_LAST
    assert predictor.model.backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    c = cfg.clone()
    c.MODEL.WEIGHTS = weights
    c.PREDICT.CHANNELS_LAST = False
    images = list(lung_window(covid_study.hu))[:2]
    plain = OneShotPredictor(c, batch_size=8, lesion_score_thresh=0.0)(images)
    fast = OneShotPredictor(predictor.cfg, batch_size=8, lesion_score_thresh=0.0)(images)
    for a, b in zip(plain, fast):
        np.testing.assert_allclose(b["image_cls"], a["image_cls"], atol=1e-5)
        np.testing.assert_allclose(b["image_cls_boxes"], a["image_cls_boxes"], atol=1e-3)
        assert len(a["instances"]) == len(b["instances"]) > 0
        np.testing.assert_allclose(b["instances"].scores, a["instances"].scores, atol=1e-5)


def test_predictor_refuses_a_checkpoint_of_another_model(cfg, tmp_path):
    """A Mask R-CNN-only checkpoint under the one-shot config lacks the image head."""
    model = seeded_model(cfg, 0)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_head")}
    path = str(tmp_path / "partial.pth")
    torch.save({"model": state}, path)
    c = cfg.clone()
    c.MODEL.WEIGHTS = path
    with pytest.raises(Exception, match="lacks .* image_head"):
        OneShotPredictor(c)


def test_hu_window_of_the_config_is_applied():
    """HU studies go through INPUT.HU_WINDOW (width, level); 8-bit studies are unchanged."""
    hu = np.array([[[-1350.0, -600.0, 150.0]]], np.float32)
    study = Study("s", "s", "nifti", hu, True, None, None, ["slice 0"], np.eye(4))
    assert model_slices(study, (1500.0, -600.0)).tolist() == [[[0, 128, 255]]]
    assert model_slices(study, (400.0, 40.0)).tolist() == [[[0, 0, 198]]]
    flat = Study("s", "s", "image", np.full((1, 1, 2), 7, np.uint8), False, None, None,
                 ["a"], np.eye(4))
    assert model_slices(flat, (1500.0, -600.0)).tolist() == [[[7, 7]]]


# ------------------------------------------------------------------------------------------
# tools/predict.py end to end
class _Result:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


def _run(*args, env=None):
    """tools/predict.py in a subprocess (as a user runs it) when ``env`` is given (the kill
    tests), else the command's entry point in-process (the same code path, without the 10 s
    of imports per run)."""
    if env is not None:
        e = dict(os.environ, OMP_NUM_THREADS="1", **env)
        return subprocess.run([sys.executable, PREDICT, *args], capture_output=True,
                              text=True, cwd=REPO, env=e, timeout=600)
    from oneshot_d2.cli import predict

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = predict.entry_point(list(args))
    return _Result(status, err.getvalue())


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory, covid_study):
    root = tmp_path_factory.mktemp("studies")
    order = [3, 0, 4, 1, 2]  # file names not in slice order
    hu = np.rint(covid_study.hu)  # whole HU: both files hold exactly the same values
    write_dicom_series(str(root / "dicom"), hu, covid_study.spacing, slope=0.5,
                       intercept=-1024.0, file_order=order)
    nifti = str(root / "patient.nii.gz")
    write_nifti_volume(nifti, hu, covid_study.spacing)
    return root, nifti


@pytest.fixture(scope="module")
def cli_opts(weights, phantom_root):
    """Config options for the CLI: the tiny model of the fixtures (datasets are not needed)."""
    return ["--config-file", AFFINITY_QUICK, *TINY, *SMALL_HEADS, "MODEL.WEIGHTS", weights]


@pytest.mark.slow
def test_cli_dicom_and_nifti_end_to_end(study_inputs, cli_opts, tmp_path, covid_study):
    root, nifti = study_inputs
    out = tmp_path / "out"
    res = _run("--input", str(root / "dicom"), nifti, "--output", str(out), "--save-overlays",
               "--save-nifti", "--no-progress", *cli_opts, "PREDICT.LESION_SCORE_THRESH", "0.0")
    assert res.returncode == 0, res.stderr[-2000:]
    studies = sorted(p for p in os.listdir(out) if os.path.isdir(out / p))
    assert len(studies) == 2
    with open(out / "slices.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    for name in studies:
        folder = out / name
        report = json.loads((folder / "report.json").read_text())
        assert report["geometry"]["slices"] == 5
        assert report["geometry"]["spacing_mm"] == pytest.approx(list(covid_study.spacing))
        assert report["patient"]["class"] in report["model"]["image_classes"]
        assert "ml" in report["burden"] and "percent_of_lung" in report["burden"]
        # the explanation is saved, not only drawn: the RoI batch and the head's weights
        explanation = report["explanation"]
        beta = load_config(AFFINITY_QUICK).MODEL.ONESHOT.ROI_BATCH_SIZE
        assert explanation["weights"] == "affinity roi_weights"
        assert len(explanation["slices"]) == 5
        for item in explanation["slices"]:
            assert np.asarray(item["boxes"]).shape == (beta, 4) and len(item["weights"]) == beta
            assert np.all(np.asarray(item["boxes"]) >= 0) and np.all(
                np.asarray(item["boxes"]) <= 128)
        assert len(os.listdir(folder / "overlays")) == 5
        assert (folder / "summary.png").stat().st_size > 1000
        labels = nib.load(str(folder / "lesions.nii.gz"))
        positions = [r["position_mm"] for r in report["slices"]]
        assert positions == sorted(positions)
        if report["kind"] == "nifti":
            src = nib.load(nifti)
            assert labels.shape == src.shape
            np.testing.assert_allclose(labels.affine, src.affine)
        else:
            assert labels.shape == (128, 128, 5)
        # the per-slice lesion areas of the CSV are the label volume's
        data = np.asarray(labels.dataobj)
        total_px = sum(int(r[k]) for r in report["slices"] for k in r if k.startswith("area_px"))
        assert total_px == int(np.count_nonzero(data))
    # both readers gave the same volume in the same orientation: the same results (a flipped
    # or transposed reader changes them)
    reports = [json.loads((out / n / "report.json").read_text()) for n in studies]
    assert reports[0]["patient"]["scores"] == reports[1]["patient"]["scores"]
    strip = [[{k: v for k, v in r.items() if k not in ("study", "slice", "position_mm")}
              for r in rep["slices"]] for rep in reports]
    assert strip[0] == strip[1]
    gaps = [np.diff([r["position_mm"] for r in rep["slices"]]) for rep in reports]
    np.testing.assert_allclose(gaps, covid_study.spacing[2])


@pytest.mark.slow
def test_cli_wrong_checkpoint_writes_nothing(study_inputs, tmp_path):
    root, nifti = study_inputs
    out = tmp_path / "out"
    res = _run("--config-file", AFFINITY_QUICK, "--input", nifti, "--output", str(out),
               "MODEL.WEIGHTS", str(tmp_path / "nope.pth"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "nope.pth" in res.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.slow
def test_prepare_phantom_study_cli(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "prepare_phantom_study", os.path.join(REPO, "datasets", "prepare_phantom_study.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "st"
    args = ["--out", str(out), "--slices", "3", "--size", "96", "--label", "cp"]
    assert run_cli(tool.main, args, prog="prepare_phantom_study") == 0
    assert len(os.listdir(out / "dicom")) == 3
    truth = nib.load(str(out / "nifti" / "phantom_truth.nii.gz"))
    assert truth.shape == (96, 96, 3) and set(np.unique(np.asarray(truth.dataobj))) <= {0, 1, 2, 3}
    foreign = tmp_path / "mine"
    foreign.mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run_cli(tool.main, ["--out", str(foreign), *args[2:], "--overwrite"],
                         prog="prepare_phantom_study")
    assert status == 2 and "not written by prepare_phantom_study" in err.getvalue()
    assert os.listdir(foreign) == []


def test_plain_mask_rcnn_predicts_lesions_without_slice_classes(covid_study):
    """The Mask R-CNN baseline has no image head: no image_cls, no patient result, the burden
    still computed. Catches the predictor or the report assuming image_cls."""
    from oneshot_d2.inference import predict_study, study_report
    from tests.common import MASK_RCNN_QUICK

    cfg = make_cfg(MASK_RCNN_QUICK, *TINY)
    predictor = OneShotPredictor(cfg, batch_size=4, allow_random_weights=True)
    assert predictor.image_classes == []
    study = Study("s", "s", "nifti", covid_study.hu, True, covid_study.spacing,
                  np.arange(5.0), [f"slice {i}" for i in range(5)], np.eye(4))
    pred = predict_study(predictor, study)
    assert pred.probs is None and pred.lung is not None
    report = study_report(pred, predictor)
    assert report["patient"] is None and "ml" in report["burden"]
    assert not any(k.startswith("prob_") for k in report["slices"][0])
