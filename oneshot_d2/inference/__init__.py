"""Running a trained model on CT studies (``tools/predict.py``).

- :class:`OneShotPredictor`: batched prediction of slices held in memory, with the evaluation's
  preprocessing;
- :func:`find_studies` / :class:`StudyRef` / :class:`Study`: DICOM series (Hounsfield units),
  NIfTI volumes and image files, as slices in display orientation with their geometry;
- :func:`predict_study` / :func:`study_report`: per-slice results, patient-level result, lesion
  burden; :func:`write_study`: the study's outputs, written atomically.
"""
from ..errors import StudyError
from .discovery import StudyRef, find_studies
from .lung_mask import lung_mask
from .outputs import study_summary_row, write_run_tables, write_study
from .predictor import OneShotPredictor, SlicePrediction
from .report import lesion_burden, patient_result
from .study import Study
from .study_prediction import StudyPrediction, model_slices, predict_study, study_report

__all__ = ["OneShotPredictor", "SlicePrediction", "Study", "StudyError", "StudyRef",
           "StudyPrediction", "find_studies", "lesion_burden", "lung_mask", "model_slices",
           "patient_result", "predict_study", "study_report", "study_summary_row",
           "write_run_tables", "write_study"]
