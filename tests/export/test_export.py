"""TorchScript and ONNX export of every architecture: the exported files give PyTorch's outputs
on two input sizes (tools/export_model.py), and tools/predict.py's exported backends give the
torch backend's slice predictions."""
import json
import os
import warnings

import numpy as np
import pytest
import torch

from oneshot_d2.errors import CheckpointError, ConfigError, UsageError
from oneshot_d2.export import FILE_NAMES, FORMATS, TOLERANCES, FlatInferenceModel, load_exported
from oneshot_d2.inference import OneShotPredictor
from oneshot_d2.inference.exported_predictor import ExportedPredictor
from oneshot_d2.inference.exporting import export_files, sample_slices
from oneshot_d2.modeling.roi_heads.roi_batch import select_roi_batch
from tests.common import (
    AFFINITY_QUICK,
    LSTM_QUICK,
    MASK_RCNN_QUICK,
    SMALL_HEADS,
    TINY,
    config_path,
    make_cfg,
    seeded_model,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # about a CPU minute: exports of four models

CLASSIFIER = config_path("real/image_classifier_R_18_FPN_1200iter_ucsd_2cls.yaml")
# Random-weight detectors score their boxes about 0.5: at this threshold they keep a number of
# lesions that differs from slice to slice (72 to 98), as a trained model's does.
LOW_THRESH = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.5", "PREDICT.LESION_SCORE_THRESH", "0.5")
# More proposals kept than the RPN finds after NMS: their number then differs from slice to
# slice (1123 to 1249); the score threshold a little higher for few lesions (2 to 12 per slice).
ALL_PROPOSALS = ("MODEL.RPN.POST_NMS_TOPK_TEST", "2000", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                 "0.54", "PREDICT.LESION_SCORE_THRESH", "0.54")
ARCHITECTURES = {
    "affinity": (AFFINITY_QUICK, *SMALL_HEADS, *LOW_THRESH),
    "lstm": (LSTM_QUICK, *SMALL_HEADS, *LOW_THRESH),
    "mask_rcnn": (MASK_RCNN_QUICK, *LOW_THRESH),
    "classifier": (CLASSIFIER,),
}
BACKENDS = {"torchscript": "torchscript", "onnx": "onnxruntime"}


def _predictor(arch, tmp_path, seed=3, extra=()):
    config, *opts = ARCHITECTURES[arch]
    cfg = make_cfg(config, *TINY, *opts, *extra)
    model = seeded_model(cfg, seed)
    if hasattr(model, "image_head") and hasattr(model, "roi_heads"):
        model.roi_heads.copy_seg_to_cls()
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = weights
    return OneShotPredictor(cfg, batch_size=4)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def exported(request, tmp_path_factory):
    """(arch, predictor, export folder, export.json) of a seeded model of each architecture,
    exported in both formats (the lesion models with every proposal kept: their number varies
    from slice to slice)."""
    tmp = tmp_path_factory.mktemp(request.param)
    predictor = _predictor(request.param, tmp,
                           extra=ALL_PROPOSALS if request.param != "classifier" else ())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_files(predictor, FORMATS, str(tmp / "exported"),
                              slices=sample_slices(predictor.cfg, size=256))
    return request.param, predictor, str(tmp / "exported"), report


def test_exported_files_equal_pytorch_on_two_input_sizes(exported):
    """Each file's outputs equal PyTorch's within TOLERANCES at two input sizes (export_files
    raises otherwise), and the comparison is not vacuous: two sizes, every output compared,
    detections present for the lesion models. Catches an exported graph with the first
    image's size or number of RoIs frozen in (tracing), or a wrong ONNX op."""
    arch, predictor, folder, report = exported
    assert report["input_sizes"] == [[128, 128], [128, 103]]
    on_disk = json.load(open(os.path.join(folder, "export.json")))
    assert on_disk == json.loads(json.dumps(report))
    for fmt in FORMATS:
        entry = report["files"][FILE_NAMES[fmt]]
        assert entry["format"] == fmt
        names = entry["outputs"]
        expect = {"affinity": 9, "lstm": 9, "mask_rcnn": 4, "classifier": 1}[arch]
        assert len(names) == expect and set(entry["max_difference"]) == set(names)
        for name, diff in entry["max_difference"].items():
            assert diff <= TOLERANCES.get(name, 1e-3), (fmt, name, diff)
    onnx.checker.check_model(os.path.join(folder, "model.onnx"), full_check=True)
    if arch != "classifier":
        flat = FlatInferenceModel(predictor.model)
        counts = [len(flat(predictor.model_input(s)["image"])[1])
                  for s in sample_slices(predictor.cfg, size=256)]
        # different numbers of lesions, fewer than the cap: a count frozen into the graph
        # would show
        assert len(set(counts)) == 2 and 0 < min(counts) and max(counts) < 100, counts


# The backends' code is the same for every architecture: both formats for the one-shot
# affinity model, ONNX for the others.
BACKEND_CHECKS = {"affinity": FORMATS, "lstm": ("onnx",), "mask_rcnn": ("onnx",),
                  "classifier": ("onnx",)}


def test_exported_backend_gives_the_torch_backends_slice_predictions(exported):
    """tools/predict.py's --backend torchscript / onnxruntime: the same SlicePrediction as
    --backend torch (class probabilities, the RoI batch, lesions with masks pasted at the
    slice's size) on slices of two sizes. Catches unscaled boxes, unpasted masks, a lost
    score threshold."""
    arch, predictor, folder, _ = exported
    slices = sample_slices(predictor.cfg, size=200)
    reference = predictor(slices)
    for fmt in BACKEND_CHECKS[arch]:
        _check_backend(arch, predictor, os.path.join(folder, FILE_NAMES[fmt]), fmt, slices,
                       reference)


def _check_backend(arch, predictor, path, fmt, slices, reference):
    other = ExportedPredictor(predictor.cfg, path, BACKENDS[fmt], batch_size=4)
    assert other.image_classes == predictor.image_classes
    assert other.lesion_classes == predictor.lesion_classes
    for ref, got in zip(reference, other(slices)):
        assert set(ref) == set(got)
        if "image_cls" in ref:
            np.testing.assert_allclose(got["image_cls"], ref["image_cls"], atol=1e-4)
        if "image_cls_boxes" in ref:
            np.testing.assert_allclose(got["image_cls_boxes"], ref["image_cls_boxes"], atol=0.05)
            for k in ref["image_cls_explanation"]:
                np.testing.assert_allclose(got["image_cls_explanation"][k],
                                           ref["image_cls_explanation"][k], rtol=1e-3,
                                           atol=1e-3)
        if "instances" in ref:
            a, b = ref["instances"], got["instances"]
            assert a.image_size == b.image_size
            assert len(a) == len(b)
            np.testing.assert_allclose(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=0.05)
            np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
            assert torch.equal(a.pred_classes, b.pred_classes)
            assert a.pred_masks.shape == b.pred_masks.shape
            assert (a.pred_masks != b.pred_masks).float().mean() <= 1e-3
    if arch != "classifier":
        assert sum(len(p["instances"]) for p in reference) > 0
    if arch != "classifier" and fmt == "onnx":  # (the filter is the backends' shared code)
        # a threshold above the exported one drops the detections below it, as in PyTorch
        scores = torch.cat([p["instances"].scores for p in reference]).sort().values
        middle = scores[len(scores) // 4: 3 * len(scores) // 4 + 1]
        gap = int((middle[1:] - middle[:-1]).argmax())  # no score near it: rounding can't flip
        thresh = float(middle[gap] + middle[gap + 1]) / 2
        strict = ExportedPredictor(predictor.cfg, path, BACKENDS[fmt],
                                   lesion_score_thresh=thresh)
        strict_ref = OneShotPredictor(predictor.cfg, lesion_score_thresh=thresh)
        kept = [(len(a["instances"]), len(b["instances"]))
                for a, b in zip(strict_ref(slices), strict(slices))]
        assert all(a == b for a, b in kept)
        assert sum(a for a, _ in kept) < sum(len(p["instances"]) for p in reference)


def test_select_roi_batch_traced_pads_like_eager():
    """The RoI batch selection traced on an image with more boxes than beta pads an image
    with 3 boxes, and one with none, exactly like eager mode: catches a kept count or a
    "no box" branch frozen into the trace as a Python value."""
    def boxes_and_scores(n, seed):
        g = torch.Generator().manual_seed(seed)
        xy = torch.rand(n, 2, 2, generator=g) * 60
        boxes = torch.cat([xy.amin(1), xy.amin(1) + 8 + 30 * torch.rand(n, 2, generator=g)], 1)
        # far apart so that NMS keeps them all
        boxes = boxes + torch.arange(n)[:, None].float() * 100
        return boxes[:, None, :].expand(n, 2, 4).contiguous(), torch.rand(n, 2, generator=g)

    def select(boxes, scores):
        out = select_roi_batch(boxes, scores, (2000, 2000), beta=8, order_by_distance=True)
        return out.boxes, out.scores, out.classes

    traced = torch.jit.trace(select, boxes_and_scores(12, 0), check_trace=False)
    for n, seed in [(3, 1), (1, 2), (20, 3)]:
        args = boxes_and_scores(n, seed)
        for a, b in zip(select(*args), traced(*args)):
            assert torch.equal(a, b), n
    empty = (torch.zeros(0, 2, 4), torch.zeros(0, 2))
    eager, got = select(*empty), traced(*empty)
    assert torch.equal(eager[0], torch.tensor([[0.0, 0.0, 2000.0, 2000.0]]).expand(8, 4))
    for a, b in zip(eager, got):
        assert torch.equal(a, b)


def test_exported_files_are_checked_against_the_config(exported):
    """A file used with another model's config or a lesion threshold below the exported one,
    an existing output without --overwrite: one-line errors, nothing replaced."""
    arch, predictor, folder, _ = exported
    onnx_path = os.path.join(folder, "model.onnx")
    other = predictor.cfg.clone()
    other.defrost()
    other.INPUT.FORMAT = "L" if other.INPUT.FORMAT != "L" else "BGR"
    with pytest.raises(ConfigError, match="does not hold this config's model: input_format"):
        ExportedPredictor(other, onnx_path, "onnxruntime")
    if arch != "classifier":
        lower = predictor.cfg.clone()
        lower.defrost()
        lower.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.1
        with pytest.raises(ConfigError, match="exported with lesion score threshold 0.54"):
            ExportedPredictor(lower, onnx_path, "onnxruntime", lesion_score_thresh=0.1)
        # as the torch backend: the box predictor's threshold when the asked one is lower
        assert ExportedPredictor(predictor.cfg, onnx_path, "onnxruntime",
                                 lesion_score_thresh=0.1).lesion_score_thresh == 0.54
    before = os.path.getmtime(onnx_path)
    with pytest.raises(UsageError, match="exists: pass --overwrite"):
        export_files(predictor, ["onnx"], folder)
    assert os.path.getmtime(onnx_path) == before


def test_unreadable_exported_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable onnx model"):
        load_exported(str(junk))
    with pytest.raises(CheckpointError, match="not a readable torchscript model"):
        load_exported(str(junk), "torchscript")
    with pytest.raises(CheckpointError, match="no such exported model file"):
        load_exported(str(tmp_path / "missing.ts"))


def test_random_padding_is_refused_at_export(tmp_path):
    predictor = _predictor("affinity", tmp_path)
    predictor.model.roi_heads.roi_padding = "original"
    with pytest.raises(ConfigError, match="ROI_PADDING 'original'.*cannot be exported"):
        FlatInferenceModel(predictor.model)


def test_export_cli_then_predict_with_each_backend_gives_the_same_reports(tmp_path):
    """tools/export_model.py, then tools/predict.py on a phantom patient (NIfTI) with
    --backend torch and onnxruntime: the same patient result, slice
    probabilities, lesion burden and lesion label volume (within float rounding), and
    report.json names the backend."""
    from oneshot_d2.cli import export_model, predict
    from oneshot_d2.data.phantom import COVID
    from oneshot_d2.data.phantom_study import render_phantom_study, write_nifti_volume

    config, *opts = ARCHITECTURES["affinity"]
    predictor = _predictor("affinity", tmp_path)
    opts = ["--config-file", config, *TINY, *opts, "MODEL.WEIGHTS"]
    folder = tmp_path / "exported"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_model.main([*opts[:1], opts[1], "--output", str(folder), "--format",
                                    "onnx", *opts[2:], predictor.cfg.MODEL.WEIGHTS])
    assert sorted(os.listdir(folder)) == ["config.yaml", "export.json", "model.onnx"]
    assert report["config_file"] == config
    study = render_phantom_study(COVID, num_slices=4, size=160, seed=2)
    nifti = str(tmp_path / "patient.nii.gz")
    write_nifti_volume(nifti, study.hu, study.spacing)
    reports = {}
    # (TorchScript's slice predictions are compared in the test above)
    for backend, weights in [("torch", predictor.cfg.MODEL.WEIGHTS),
                             ("onnxruntime", str(folder / "model.onnx"))]:
        out = tmp_path / backend
        status = predict.entry_point(["--input", nifti, "--output", str(out), "--no-progress",
                                      "--save-nifti", "--backend", backend, *opts, weights])
        assert status == 0, backend
        reports[backend] = json.load(open(out / "patient" / "report.json"))
        reports[backend]["labels"] = np.asarray(
            __import__("nibabel").load(str(out / "patient" / "lesions.nii.gz")).dataobj)
    ref = reports["torch"]
    assert ref["model"]["backend"] == "torch"
    assert ref["burden"]["ml"]["total"] > 0, "no lesion: the burden comparison is vacuous"
    for backend in ("onnxruntime",):
        got = reports[backend]
        assert got["model"]["backend"] == backend
        assert got["patient"]["class"] == ref["patient"]["class"]
        for k, v in ref["patient"]["scores"].items():
            assert got["patient"]["scores"][k] == pytest.approx(v, abs=1e-4)
        probs = [(a[k], b[k]) for a, b in zip(ref["slices"], got["slices"]) for k in a
                 if k.startswith("prob_")]
        assert len(probs) == 4 * 3
        for a, b in probs:
            assert b == pytest.approx(a, abs=1e-4)
        assert got["burden"]["ml"]["total"] == pytest.approx(ref["burden"]["ml"]["total"],
                                                            rel=1e-3)
        assert (got["labels"] != ref["labels"]).mean() <= 1e-4


def test_stable_argsort_equals_torch_stable_sort():
    from oneshot_d2.modeling.roi_heads.roi_batch import _stable_argsort

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 8, 16):
        values = torch.randint(0, 4, (n,), generator=g).float()  # many ties
        assert torch.equal(_stable_argsort(values), torch.sort(values, stable=True).indices)


@pytest.mark.parametrize("arch", ["affinity"])  # its mask head is the Mask R-CNN's
def test_slices_without_lesions_run_in_the_exported_files(arch, tmp_path):
    """A slice without any detection (most slices of a scan) and one with a single detection:
    the exported files run and agree with PyTorch. Catches the ONNX GroupNorm reshape of an
    empty batch (ONNX Runtime refuses (0, groups, -1))."""
    predictor = _predictor(arch, tmp_path, extra=("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.55",
                                                  "PREDICT.LESION_SCORE_THRESH", "0.55"))
    slices = sample_slices(predictor.cfg, size=200)
    flat = FlatInferenceModel(predictor.model)
    assert [len(flat(predictor.model_input(s)["image"])[1]) for s in slices] == [0, 1]
    # ONNX only: TorchScript runs torch's own GroupNorm, which takes empty batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_files(predictor, ["onnx"], str(tmp_path / "exported"), slices=slices)
    other = ExportedPredictor(predictor.cfg, str(tmp_path / "exported" / "model.onnx"),
                              "onnxruntime")
    assert [len(p["instances"]) for p in other(slices)] == [0, 1]


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    """The cheapest model (the plain classifier), exported in both formats."""
    tmp = tmp_path_factory.mktemp("classifier")
    predictor = _predictor("classifier", tmp)
    export_files(predictor, FORMATS, str(tmp / "exported"),
                 slices=sample_slices(predictor.cfg, 128))
    return predictor, str(tmp / "exported")


def test_a_failed_export_writes_nothing(classifier_export, tmp_path, monkeypatch):
    """A file that fails its check (here: every difference called too large) is not left in
    the folder, nor are temporary files; an export of one format next to an earlier export's
    other format is refused."""
    import oneshot_d2.inference.exporting as exporting

    predictor, folder = classifier_export
    target = tmp_path / "failed"
    monkeypatch.setattr(exporting, "outside_tolerance", lambda diffs: sorted(diffs)[:1])
    with pytest.raises(exporting.ExportMismatch, match="differ from PyTorch"):
        export_files(predictor, FORMATS, str(target), slices=sample_slices(predictor.cfg, 128))
    assert os.listdir(target) == []
    monkeypatch.undo()
    with pytest.raises(UsageError, match="model.ts exists and would be left"):
        export_files(predictor, ["onnx"], folder, overwrite=True)


def test_a_torchscript_trace_runs_on_its_device_only(classifier_export):
    _, folder = classifier_export
    with pytest.raises(ConfigError, match="traced on cpu, asked to run on cuda"):
        load_exported(os.path.join(folder, "model.ts"), device="cuda")
