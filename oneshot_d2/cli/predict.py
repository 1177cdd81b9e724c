"""Run a trained oneshot_d2 model on CT studies: DICOM series, NIfTI volumes, image files.

    python tools/predict.py --config-file CFG \\
        --input scan_dicom_folder/ patient.nii.gz slices/ --output predictions/ \\
        [--batch-size 8] [--device cpu|cuda] [--save-overlays] [--save-nifti]
        [--backend torch|torchscript|onnxruntime] [--num-workers N]
        [--output-type html|dicom-seg|dicom-sr] [--keep-identifiers] [--skip-existing] \\
        MODEL.WEIGHTS output/model_final.pth

(config options such as MODEL.WEIGHTS come last: they take the rest of the command line)

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
import multiprocessing
import os
import re
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from tqdm import tqdm

from ..compat import filter_known_warnings
from ..config import load_config, resolve_device
from ..errors import OneShotError, UsageError
from ..inference import (
    OneShotPredictor,
    StudyRef,
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
    p.add_argument("--num-workers", type=int, default=1, metavar="N",
                   help="predict the studies in N processes at once, each with its own model "
                        "and 1/N of the threads (default 1); the outputs are those of one "
                        "process, the run's tables written at the end")
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
    if args.num_workers < 1:
        raise UsageError(f"--num-workers must be >= 1, got {args.num_workers}")
    dicom_outputs = sorted(t for t in set(args.output_type) if t.startswith("dicom-"))
    if dicom_outputs and not args.keep_identifiers:
        raise UsageError(f"--output-type {dicom_outputs[0]} writes the patient's identifiers "
                         "(a DICOM object joins the source study in PACS): add "
                         "--keep-identifiers")
    # the config and the device are checked before the studies are searched
    cfg = load_config(args.config_file, args.opts)
    resolve_device(cfg, args.device or "")  # --device cuda without a GPU: refused
    refs, errors = find_studies(args.input, keep_identifiers=args.keep_identifiers)
    failed = len(errors)
    for e in errors:
        print(f"predict: error: {error_message(e)}", file=sys.stderr)
    if not refs:
        print("predict: error: no study to predict in " + " ".join(args.input), file=sys.stderr)
        return EXIT_ERROR
    # here too with workers: the weights are checked before the workers start
    runner = _StudyRunner(args, cfg=cfg)
    out = runner.out
    if args.num_workers > 1 and len(refs) > 1:
        del runner
        outcomes = _run_in_workers(args, refs)
    else:
        outcomes = _run_here(runner, refs)
    slice_rows, study_rows = [], []
    reused = 0
    html = "html" in args.output_type
    for outcome in outcomes:  # in input order, as they complete
        if outcome.error is not None:
            print(f"predict: error: {outcome.error}", file=sys.stderr)
            failed += 1
        reused += outcome.reused
        slice_rows += outcome.slice_rows
        study_rows.append(outcome.study_row)
        write_studies_table(out, study_rows, html)
        if outcome.error is None and not outcome.reused:
            kill_point(f"predict-done:{outcome.study_row['study']}")
    if reused:
        logger.info("%d of %d studies kept from an earlier run (--skip-existing)", reused,
                    len(refs))
    study_rows += [study_summary_row("", "", error=_row_error(args, e)) for e in errors]
    write_run_tables(out, slice_rows, study_rows, html)
    if failed:
        logger.info("%d of %d studies failed (studies.csv lists them)", failed,
                    len(refs) + len(errors))
        return EXIT_ERROR
    return 0


def _row_error(args: argparse.Namespace, e: BaseException) -> str:
    """studies.csv's error: no path unless --keep-identifiers."""
    text = error_message(e)
    return text if args.keep_identifiers else without_paths(text, args.input)


@dataclass
class StudyOutcome:
    """What one study gave: its rows of the run tables, whether it was kept from an earlier
    run, its one-line error (``None`` when it succeeded)."""
    slice_rows: List[Dict]
    study_row: Dict
    reused: bool = False
    error: Optional[str] = None


class _StudyRunner:
    """The predictor and the run's settings; :meth:`run` predicts and writes one study. Built
    once per process (the main one, or each of ``--num-workers``)."""

    def __init__(self, args: argparse.Namespace, threads: int = 0, progress: bool = True,
                 cfg: Optional[CfgNode] = None):
        if threads:
            torch.set_num_threads(threads)
        self.args = args
        if cfg is None:  # a --num-workers process: the run's config, loaded again
            cfg = load_config(args.config_file, args.opts)
            resolve_device(cfg, args.device or "")
        if args.backend == "torch":
            self.predictor = OneShotPredictor(cfg, batch_size=args.batch_size)
        else:
            if not cfg.MODEL.WEIGHTS:
                raise UsageError(f"--backend {args.backend} runs an exported file: give it as "
                                 "MODEL.WEIGHTS (model.onnx / model.ts of "
                                 "tools/export_model.py)")
            self.predictor = ExportedPredictor(cfg, cfg.MODEL.WEIGHTS, args.backend,
                                               batch_size=args.batch_size)
        self.out = make_folder(args.output, "--output")
        self.output_types = sorted(set(args.output_type))
        self.dicom_outputs = [t for t in self.output_types if t.startswith("dicom-")]
        self.config_yaml = self.predictor.cfg.dump()
        options = {"save_overlays": args.save_overlays, "save_nifti": args.save_nifti,
                   "keep_identifiers": args.keep_identifiers, "output_types": self.output_types}
        if args.backend != "torch":  # the default adds no key
            options["backend"] = args.backend
        self.run_fingerprint = run_fingerprint(self.predictor.cfg, options)
        self.model_name = (f"oneshot_d2 {cfg.MODEL.META_ARCHITECTURE} "
                           f"{cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME}")
        self.progress = progress and not args.no_progress

    def run(self, ref: StudyRef) -> StudyOutcome:
        """Predict and write one study (or keep it, ``--skip-existing``); a study's error is
        its outcome, not an exception."""
        args = self.args
        try:
            fingerprint = study_fingerprint(self.run_fingerprint, ref.files, ref.name,
                                            ref.source)
            previous = read_study_report(os.path.join(self.out, ref.name)) \
                if args.skip_existing else None
            if previous is not None and previous.get("fingerprint") == fingerprint:
                logger.info("%s: done before, kept (--skip-existing)", ref.name)
                return StudyOutcome(previous["slices"],
                                    study_summary_row(ref.name, ref.source, previous),
                                    reused=True)
            study = ref.load()
            # a study they cannot reference (not DICOM, attributes missing) fails before the
            # model
            for output in self.dicom_outputs:
                source_headers(study, f"--output-type {output}",
                               geometry=output == "dicom-seg")
            start = time.perf_counter()
            with tqdm(total=study.num_slices, desc=study.name, unit="slice",
                      disable=not self.progress, leave=False, position=1) as bar:
                pred = predict_study(self.predictor, study, progress=bar.update)
            report = study_report(pred, self.predictor, args.config_file, fingerprint)
            folder = write_study(self.out, pred, report, self.config_yaml,
                                 self.predictor.image_classes, self.predictor.lesion_classes,
                                 args.save_overlays, args.save_nifti, self.output_types,
                                 self.model_name)
        except STUDY_ERRORS as e:
            if args.debug:
                raise
            return StudyOutcome([], study_summary_row(ref.name, ref.source,
                                                      error=_row_error(args, e)),
                                error=error_message(e))
        patient = report["patient"]
        logger.info("%s: %d slices in %.1f s -> %s%s", study.name, study.num_slices,
                    time.perf_counter() - start,
                    f"patient {patient['class']}" if patient else "done",
                    f", written to {folder}")
        return StudyOutcome(report["slices"],
                            study_summary_row(study.name, study.source, report))


def _run_here(runner: _StudyRunner, refs: Sequence[StudyRef]) -> Iterator[StudyOutcome]:
    """The studies one after the other in this process."""
    for ref in tqdm(refs, desc="studies", unit="study", disable=not runner.progress,
                    position=0):
        yield runner.run(ref)


_WORKER: Dict[str, object] = {}


def _worker_init(args: argparse.Namespace, threads: int) -> None:
    """A ``--num-workers`` process's start: its own predictor. A failure is kept and raised
    by its first study (an initializer's exception would only break the pool)."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    filter_known_warnings()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        _WORKER["runner"] = _StudyRunner(args, threads, progress=False)
    except Exception as e:  # noqa: BLE001  reported by the main process, one line
        _WORKER["error"] = f"a --num-workers process could not start: {error_message(e)}"


def _exit_with_parent(parent: int) -> None:
    """Stop this worker within a second of its main process's death (a killed run): no study
    is then written after the run was stopped (an unfinished one leaves only temporary files,
    removed by the next run)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker_run(ref: StudyRef) -> StudyOutcome:
    """One study in a ``--num-workers`` process."""
    if "error" in _WORKER:
        raise OneShotError(_WORKER["error"])
    return _WORKER["runner"].run(ref)


def _run_in_workers(args: argparse.Namespace,
                    refs: Sequence[StudyRef]) -> Iterator[StudyOutcome]:
    """The studies shared over ``--num-workers`` processes (each with its own predictor and
    an equal share of the torch threads); the outcomes in input order, each as soon as it
    and all before it are done."""
    workers = min(args.num_workers, len(refs))
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
    with ProcessPoolExecutor(workers, context, _worker_init, (args, threads)) as pool:
        # in input order; a worker takes the next study as soon as it is free
        outcomes = pool.map(_worker_run, refs)
        try:
            yield from tqdm(outcomes, total=len(refs), desc="studies", unit="study",
                            disable=args.no_progress)
        except BrokenProcessPool as e:  # a worker killed (out of memory, a signal)
            raise OneShotError(f"a --num-workers process stopped unexpectedly ({e}); the "
                               "studies written so far are complete") from None


def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-predict`` console script (and ``tools/predict.py``): :func:`main` with
    one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="predict")
