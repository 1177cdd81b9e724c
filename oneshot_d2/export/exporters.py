"""Export a model's inference path (:class:`~.flat_model.FlatInferenceModel`) to TorchScript or
ONNX, and run the exported file (TorchScript, ONNX Runtime).

Every file carries a JSON description (``oneshot_d2.json``: the model kind, the output names,
the config's architecture, classes and input format, the versions that wrote it), in the
TorchScript archive's extra files or the ONNX model's metadata, so that a runtime can check it
against the config it is given. Files are written under a temporary name and renamed.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode

from ..errors import CheckpointError, ConfigError
from ..utils.file_io import atomic_open, atomic_write_bytes
from ..version import __version__
from .flat_model import LESION_OUTPUTS, FlatInferenceModel, patch_builtin_len

__all__ = ["FORMATS", "FILE_NAMES", "META_KEY", "config_identity", "export_description",
           "export_torchscript",
           "export_onnx", "ExportedModel", "load_exported", "ONNX_OPSET"]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
META_KEY = "oneshot_d2.json"
# 16 is the first opset whose RoiAlign has Detectron2's half-pixel ("aligned") coordinates.
ONNX_OPSET = 17


@contextlib.contextmanager
def quiet_export_warnings() -> Iterator[None]:
    """Silence what tracing and the exporters say about every Detectron2 model: TracerWarnings
    (Python values taken as constants: the shapes of fixed-size parts such as the RoI batch,
    checked by the tests at two input sizes), TorchScript's deprecation notice, the ONNX
    exporter's notes on ops it maps."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+. is deprecated")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        yield


def config_identity(cfg: CfgNode, kind: str) -> Dict:
    """What an exported file must share with the config it runs with: the architecture, the
    slice and lesion class counts (0 where the kind has none), the input format."""
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "num_image_classes": int(cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES) if kind != "rcnn" else 0,
        "num_lesion_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        if kind != "classifier" else 0,
        "input_format": cfg.INPUT.FORMAT,
    }


def export_description(cfg: CfgNode, flat: FlatInferenceModel, fmt: str) -> Dict:
    """The JSON description stored with an exported file (``lesion_score_thresh``: the box
    predictor's threshold at export; the file holds no detection scoring below it)."""
    box_predictor = getattr(getattr(flat.model, "roi_heads", None), "box_predictor", None)
    return {
        "format": fmt,
        "kind": flat.kind,
        "output_names": list(flat.names),
        **config_identity(cfg, flat.kind),
        # a traced TorchScript graph holds its device; ONNX files run on any provider
        "device": next(flat.model.parameters()).device.type,
        "lesion_score_thresh": float(getattr(box_predictor, "test_score_thresh", 0.0)),
        "oneshot_d2_version": __version__,
        "torch_version": torch.__version__,
    }


def export_torchscript(flat: FlatInferenceModel, sample: torch.Tensor, path: str,
                       description: Dict) -> None:
    """Trace ``flat`` on ``sample`` ((C, H, W), the model's input) and save it at ``path``."""
    flat.probe(sample)
    description = dict(description, output_names=list(flat.names))
    with torch.no_grad(), patch_builtin_len(), quiet_export_warnings():
        traced = torch.jit.trace(flat, (sample,), check_trace=False, strict=False)
    with atomic_open(path, "wb") as f:
        torch.jit.save(traced, f, _extra_files={META_KEY: json.dumps(description)})


def export_onnx(flat: FlatInferenceModel, sample: torch.Tensor, path: str, description: Dict,
                opset: int = ONNX_OPSET) -> None:
    """Export ``flat`` traced on ``sample`` to ONNX (height and width of the input and the number
    of lesions dynamic), check it with ``onnx.checker`` and save it at ``path``."""
    import onnx  # imported here: only export needs it

    flat.probe(sample)
    description = dict(description, output_names=list(flat.names), opset=opset)
    dynamic = {"image": {1: "height", 2: "width"}}
    for name in flat.names:
        if name in LESION_OUTPUTS:
            dynamic[name] = {0: "lesions"}
    buffer = io.BytesIO()
    with torch.no_grad(), patch_builtin_len(), quiet_export_warnings():
        torch.onnx.export(flat, (sample,), buffer, dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=list(flat.names),
                          dynamic_axes=dynamic, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(description)
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())


class ExportedModel:
    """An exported file, loaded: ``model(image)`` -> the flat outputs as CPU tensors.

    Attributes:
        description: the file's JSON description (:func:`export_description`).
        names: its output names.
    """

    def __init__(self, path: str, fmt: str, device: str = "cpu", threads: int = 0):
        if fmt not in FORMATS:
            raise ConfigError(f"exported format must be one of {FORMATS}, got {fmt!r}")
        self.path, self.format, self.device = path, fmt, torch.device(device)
        try:
            if fmt == "torchscript":
                # loaded on the CPU first: the description says where it may run
                extra = {META_KEY: ""}
                with quiet_export_warnings():
                    self._module = torch.jit.load(path, map_location="cpu",
                                                  _extra_files=extra)
                self.description = json.loads(extra[META_KEY] or "null")
            else:
                self._session = _onnx_session(path, self.device, threads)
                meta = self._session.get_modelmeta().custom_metadata_map
                self.description = json.loads(meta.get(META_KEY, "null"))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001  torch / ONNX Runtime errors of a bad file
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: no such exported model file") from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"{path}: not a readable {fmt} model ({first})") from None
        if not isinstance(self.description, dict) or "output_names" not in self.description:
            raise CheckpointError(f"{path}: not written by oneshot_d2's export (no "
                                  f"{META_KEY} description)")
        if self.description.get("format") != fmt:
            raise CheckpointError(f"{path}: a {self.description.get('format')} export, "
                                  f"not {fmt}")
        traced_on = self.description.get("device", "cpu")
        if fmt == "torchscript" and traced_on != self.device.type:
            raise ConfigError(f"{path}: traced on {traced_on}, asked to run on "
                              f"{self.device.type}: a TorchScript trace runs on its device only "
                              "(export again with MODEL.DEVICE " + self.device.type + ", or use "
                              "the ONNX file)")
        if fmt == "torchscript" and self.device.type != "cpu":
            with quiet_export_warnings():
                self._module = torch.jit.load(path, map_location=self.device)
        self.names: List[str] = list(self.description["output_names"])

    def __call__(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of one model-input image ((C, H, W) uint8), in :attr:`names` order."""
        if self.format == "torchscript":
            with torch.inference_mode():
                outs = self._module(image.to(self.device))
            return [o.cpu() for o in outs]
        feeds = {"image": np.ascontiguousarray(image.cpu().numpy())}
        return [torch.from_numpy(np.asarray(o)) for o in self._session.run(None, feeds)]


def _onnx_session(path: str, device: torch.device, threads: int):
    """An ONNX Runtime session on ``device`` (CUDA where ONNX Runtime has it, else the CPU)
    with ``threads`` intra-op threads (0: ONNX Runtime's default)."""
    import onnxruntime as ort  # imported here: only this backend needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers etc. are not for users
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("MODEL.DEVICE cuda: this ONNX Runtime has no CUDA provider "
                              "(pip install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(path, options, providers=providers)


def load_exported(path: str, fmt: Optional[str] = None, device: str = "cpu",
                  threads: int = 0) -> ExportedModel:
    """Load an exported file; ``fmt`` defaults from the suffix (``.ts`` / ``.pt``:
    TorchScript, ``.onnx``: ONNX)."""
    if fmt is None:
        fmt = "onnx" if path.endswith(".onnx") else "torchscript" \
            if path.endswith((".ts", ".pt")) else ""
        if not fmt:
            raise ConfigError(f"{path}: name the exported format (suffix .ts or .onnx)")
    return ExportedModel(path, fmt, device, threads)
