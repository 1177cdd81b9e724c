"""tools/predict.py --num-workers: the studies of a run shared over processes give the outputs of
one process (study folders, run tables in input order, error rows)."""
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from oneshot_d2.cli import predict
from oneshot_d2.data.phantom import COVID, NORMAL
from oneshot_d2.data.phantom_study import render_phantom_study, write_nifti_volume
from tests.common import AFFINITY_QUICK, SMALL_HEADS, TINY, make_cfg, seeded_model

pytestmark = pytest.mark.slow
RUN_DEPENDENT = ("created", "seconds")  # the only report.json keys that differ between runs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three phantom patients (NIfTI), a file that is not a volume, and seeded weights."""
    root = tmp_path_factory.mktemp("cohort")
    inputs = []
    for k, (name, label) in enumerate([("p1", COVID), ("p2", NORMAL), ("p3", COVID)]):
        study = render_phantom_study(label, num_slices=4, size=128, seed=k)
        path = str(root / f"{name}.nii.gz")
        write_nifti_volume(path, study.hu, study.spacing)
        inputs.append(path)
    broken = root / "p0_broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    inputs.insert(1, str(broken))
    cfg = make_cfg(AFFINITY_QUICK, *TINY, *SMALL_HEADS)
    model = seeded_model(cfg, 4)
    model.roi_heads.copy_seg_to_cls()
    weights = str(root / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    return inputs, weights


def _run(cohort, out, workers):
    inputs, weights = cohort
    return predict.entry_point(
        ["--config-file", AFFINITY_QUICK, "--input", *inputs, "--output", str(out),
         "--no-progress", "--save-nifti", "--num-workers", str(workers), *TINY, *SMALL_HEADS,
         "PREDICT.LESION_SCORE_THRESH", "0.3", "MODEL.WEIGHTS", weights])


def _read(out):
    tables = {}
    for name in ("slices.csv", "studies.csv"):
        with open(out / name, newline="") as f:
            tables[name] = list(csv.DictReader(f))
    studies = {}
    for name in sorted(os.listdir(out)):
        if os.path.isdir(out / name):
            report = json.loads((out / name / "report.json").read_text())
            for key in RUN_DEPENDENT:
                report.pop(key)
            labels = np.asarray(nib.load(str(out / name / "lesions.nii.gz")).dataobj)
            studies[name] = (report, labels)
    return tables, studies


def test_two_workers_give_the_outputs_of_one_process(cohort, tmp_path):
    """Catches studies lost, duplicated or out of input order in the merged tables, a worker
    predicting with other settings, and a failed study not reported."""
    assert _run(cohort, tmp_path / "one", 1) == 2  # the broken file: exit status 2
    assert _run(cohort, tmp_path / "two", 2) == 2
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert [(r["study"], r["status"]) for r in one[0]["studies.csv"]] == [
        ("p1", "ok"), ("p0_broken", "error"), ("p2", "ok"), ("p3", "ok")]
    assert one[0] == two[0]  # slices.csv and studies.csv, row for row
    assert len(one[0]["slices.csv"]) == 12
    assert sorted(one[1]) == sorted(two[1]) == ["p1", "p2", "p3"]
    for name, (report, labels) in one[1].items():
        other_report, other_labels = two[1][name]
        assert other_report == report
        np.testing.assert_array_equal(other_labels, labels)
    assert sum(int(labels.any()) for _, labels in one[1].values()) > 0  # lesions compared
