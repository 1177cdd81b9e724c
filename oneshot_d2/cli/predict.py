"""Run a trained oneshot_d2 model on CT studies: DICOM series, NIfTI volumes, image files.

    python tools/predict.py --config-file CFG MODEL.WEIGHTS output/model_final.pth \\
        --input scan_dicom_folder/ patient.nii.gz slices/ --output predictions/ \\
        [--batch-size 8] [--device cpu|cuda] [--save-overlays] [--save-nifti]
        [--backend torch|torchscript|onnxruntime]
        [--output-type html|dicom-seg|dicom-sr] [--keep-identifiers] [--skip-existing]

One study per DICOM series (a folder tree may hold several), per NIfTI file, per folder of
image files or per single image file. Hounsfield-unit inputs are windowed with the config's
``INPUT.HU_WINDOW``; 8-bit images are taken as already windowed. Outputs (README, "Predict";
:mod:`oneshot_d2.inference.outputs`): ``slices.csv`` and ``studies.csv`` for the run, and per
study ``report.json`` (geometry, model, patient-level result, lesion burden, per-slice results),
its ``slices.csv`` and ``config.yaml``, overlays and a summary figure (``--save-overlays``), the
lesion label volume as NIfTI in the input's geometry (``--save-nifti``). Every output is written
atomically. No output holds a DICOM study's patient identifiers (PatientID, UIDs, its paths and
file names) unless ``--keep-identifiers``.

Exit status: 0 when every study was written; 2 when a study could not be read or written (one
line ``predict: error: <file>: <problem>`` each, the other studies still complete) or when the
config, checkpoint or options are wrong (nothing is written). ``--debug`` shows tracebacks.
"""
import argparse
import logging
import os
import re
import sys
import time
from typing import List, Optional, Sequence

from tqdm import tqdm

from ..config import load_config, resolve_device
from ..errors import OneShotError, UsageError
from ..inference import (
    OneShotPredictor,
    find_studies,
    predict_study,
    study_report,
    study_summary_row,
    write_run_tables,
    write_study,
)
from ..inference.dicom_sources import source_headers
from ..inference.exported_predictor import BACKENDS, ExportedPredictor
from ..inference.fingerprint import run_fingerprint, study_fingerprint
from ..inference.outputs import read_study_report, write_studies_table
from ..utils.file_io import make_folder
from ..utils.testing import kill_point
from .common import EXIT_ERROR, add_debug_argument, error_message, run_cli

logger = logging.getLogger("predict")
# Errors of one study: it is reported and skipped, the others still run.
STUDY_ERRORS = (OneShotError, OSError)
OUTPUT_TYPES = ("html", "dicom-seg", "dicom-sr")


def without_paths(message: str, inputs: Sequence[str]) -> str:
    """``message`` with every path under an input replaced by ``input k`` (the input itself)
    or ``a file of input k``: error rows of studies.csv name no folder or file, which are
    often named after the patient or a UID."""
    forms = sorted({(form, k) for k, path in enumerate(inputs, 1)
                    for form in (str(path).rstrip("/") or "/", os.path.abspath(path))},
                   key=lambda fk: -len(fk[0]))
    for form, k in forms:
        message = re.sub(r"(?<![\w./-])" + re.escape(form) + r"[^\s:(),]*",
                         lambda m, k=k, form=form: f"input {k}" if m.group(0) == form
                         else f"a file of input {k}", message)
    return message


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = add_debug_argument(argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH",
                   help="DICOM files / folders, NIfTI files, image files / folders")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (8)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (default): the checkpoint in PyTorch; torchscript / onnxruntime: "
                        "a file of tools/export_model.py given as MODEL.WEIGHTS (model.ts / "
                        "model.onnx), run by TorchScript / ONNX Runtime (docs/deploy.md)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="default: the config's MODEL.DEVICE (a CUDA one falls back to the CPU "
                        "when there is no GPU; --device cuda is refused then)")
    p.add_argument("--save-overlays", action="store_true",
                   help="one PNG per slice and a summary figure per study")
    p.add_argument("--save-nifti", action="store_true",
                   help="the lesion label volume as NIfTI in the input's geometry")
    p.add_argument("--output-type", action="append", default=[], choices=OUTPUT_TYPES,
                   metavar="TYPE",
                   help="an extra output (repeatable): html, a self-contained report.html per "
                        "study and index.html over the run; dicom-seg, the lesion labels as a "
                        "DICOM Segmentation object; dicom-sr, the lesion burden and patient "
                        "result as a DICOM Structured Report (TID 1500). The DICOM ones: DICOM "
                        "inputs only, and they carry the patient's identifiers: they need "
                        "--keep-identifiers")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="name DICOM studies <PatientID>_<SeriesNumber> and keep PatientID, "
                        "UIDs, SeriesDescription, paths and file names in the outputs "
                        "(default: none of them; docs/predict.md)")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep a study folder whose result is for the same input content, "
                        "weights, config and output options (report.json's fingerprint) "
                        "instead of recomputing it: a stopped cohort run resumes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config options, e.g. MODEL.WEIGHTS output/model_final.pth")
    args = p.parse_args(argv)
    if "--debug" in args.opts:
        args.opts = [o for o in args.opts if o != "--debug"]
        args.debug = True
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # a line per copied DICOM module
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    output_types = sorted(set(args.output_type))
    dicom_outputs = [t for t in output_types if t.startswith("dicom-")]
    html = "html" in output_types
    if dicom_outputs and not args.keep_identifiers:
        raise UsageError(f"--output-type {dicom_outputs[0]} writes the patient's identifiers "
                         "(a DICOM object joins the source study in PACS): add "
                         "--keep-identifiers")
    cfg = load_config(args.config_file, args.opts)
    resolve_device(cfg, args.device or "")  # --device cuda without a GPU: refused
    refs, errors = find_studies(args.input, keep_identifiers=args.keep_identifiers)
    failed = len(errors)
    for e in errors:
        print(f"predict: error: {error_message(e)}", file=sys.stderr)
    if not refs:
        print("predict: error: no study to predict in " + " ".join(args.input), file=sys.stderr)
        return EXIT_ERROR
    if args.backend == "torch":
        predictor = OneShotPredictor(cfg, batch_size=args.batch_size)
    else:
        if not cfg.MODEL.WEIGHTS:
            raise UsageError(f"--backend {args.backend} runs an exported file: give it as "
                             "MODEL.WEIGHTS (model.onnx / model.ts of tools/export_model.py)")
        predictor = ExportedPredictor(cfg, cfg.MODEL.WEIGHTS, args.backend,
                                      batch_size=args.batch_size)
    out = make_folder(args.output, "--output")

    def row_error(e: BaseException) -> str:  # studies.csv's error: no path unless kept
        text = error_message(e)
        return text if args.keep_identifiers else without_paths(text, args.input)

    config_yaml = predictor.cfg.dump()
    options = {"save_overlays": args.save_overlays, "save_nifti": args.save_nifti,
               "keep_identifiers": args.keep_identifiers, "output_types": output_types}
    if args.backend != "torch":  # (torch: the fingerprints of earlier versions stay valid)
        options["backend"] = args.backend
    run = run_fingerprint(predictor.cfg, options)
    model_name = f"oneshot_d2 {cfg.MODEL.META_ARCHITECTURE} {cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME}"
    slice_rows, study_rows = [], []
    reused = 0
    studies_bar = tqdm(refs, desc="studies", unit="study", disable=args.no_progress,
                       position=0)
    for ref in studies_bar:
        try:
            fingerprint = study_fingerprint(run, ref.files, ref.name, ref.source)
            previous = read_study_report(os.path.join(out, ref.name)) \
                if args.skip_existing else None
            if previous is not None and previous.get("fingerprint") == fingerprint:
                slice_rows += previous["slices"]
                study_rows.append(study_summary_row(ref.name, ref.source, previous))
                write_studies_table(out, study_rows, html)
                reused += 1
                logger.info("%s: done before, kept (--skip-existing)", ref.name)
                continue
            study = ref.load()
            # a study they cannot reference (not DICOM, attributes missing) fails before the model
            for output in dicom_outputs:
                source_headers(study, f"--output-type {output}", geometry=output == "dicom-seg")
            start = time.perf_counter()
            with tqdm(total=study.num_slices, desc=study.name, unit="slice",
                      disable=args.no_progress, leave=False, position=1) as bar:
                pred = predict_study(predictor, study, progress=bar.update)
            report = study_report(pred, predictor, args.config_file, fingerprint)
            folder = write_study(out, pred, report, config_yaml, predictor.image_classes,
                                 predictor.lesion_classes, args.save_overlays, args.save_nifti,
                                 output_types, model_name)
        except STUDY_ERRORS as e:
            if args.debug:
                raise
            print(f"predict: error: {error_message(e)}", file=sys.stderr)
            study_rows.append(study_summary_row(ref.name, ref.source, error=row_error(e)))
            write_studies_table(out, study_rows, html)
            failed += 1
            continue
        slice_rows += report["slices"]
        study_rows.append(study_summary_row(study.name, study.source, report))
        write_studies_table(out, study_rows, html)
        patient = report["patient"]
        logger.info("%s: %d slices in %.1f s -> %s%s", study.name, study.num_slices,
                    time.perf_counter() - start,
                    f"patient {patient['class']}" if patient else "done",
                    f", written to {folder}")
        kill_point(f"predict-done:{study.name}")
    studies_bar.close()
    if reused:
        logger.info("%d of %d studies kept from an earlier run (--skip-existing)", reused,
                    len(refs))
    study_rows += [study_summary_row("", "", error=row_error(e)) for e in errors]
    write_run_tables(out, slice_rows, study_rows, html)
    if failed:
        logger.info("%d of %d studies failed (studies.csv lists them)", failed,
                    len(refs) + len(errors))
        return EXIT_ERROR
    return 0



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-predict`` console script (and ``tools/predict.py``): :func:`main` with
    one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="predict")
