"""Export of the models' inference path to TorchScript and ONNX, and the exported files'
runtimes (``tools/export_model.py``; ``tools/predict.py --backend``)."""
from .exporters import (
    FILE_NAMES,
    FORMATS,
    ONNX_OPSET,
    ExportedModel,
    config_identity,
    export_description,
    export_onnx,
    export_torchscript,
    load_exported,
)
from .flat_model import (
    KINDS,
    TOLERANCES,
    FlatInferenceModel,
    model_kind,
    output_differences,
    output_names,
    outside_tolerance,
    unflatten,
)

__all__ = ["FILE_NAMES", "FORMATS", "ONNX_OPSET", "ExportedModel", "config_identity",
           "export_description",
           "export_onnx", "export_torchscript", "load_exported", "FlatInferenceModel",
           "model_kind", "output_differences", "output_names", "outside_tolerance",
           "unflatten", "KINDS", "TOLERANCES"]
