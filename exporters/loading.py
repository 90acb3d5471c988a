"""The files of an exported folder, and opening its model in onnxruntime with a one-line error when damaged.

Imports onnxruntime only (no torch), so that the torch-free runtime can use it."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

from abp_deploy.errors import AbpError

MODEL_FILE = "model.onnx"
REPORT_FILE = "export_report.json"
CPU_PROVIDER, GPU_PROVIDER = "CPUExecutionProvider", "CUDAExecutionProvider"


def _model_file(onnx_dir_or_file: str | Path) -> Path:
    """The .onnx file itself, or the model.onnx inside an export folder."""
    path = Path(onnx_dir_or_file)
    return path / MODEL_FILE if path.is_dir() else path


def open_session(onnx_dir_or_file: str | Path, providers: list[str] | None = None,
                 threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession on the CPU (unless `providers` says otherwise), `threads` intra-op threads.

    onnxruntime falls back to the CPU with only a warning when a provider cannot start (CUDA libraries
    missing); that is an error here, so that no CPU figure is ever reported as another provider's.
    """
    path = _model_file(onnx_dir_or_file)
    if not path.is_file():
        raise AbpError(f"no ONNX model at {path}: run abp-deploy export first")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    wanted = providers or [CPU_PROVIDER]
    try:
        session = ort.InferenceSession(str(path), options, providers=wanted)
    except (InvalidProtobuf, InvalidArgument, InvalidGraph, Fail) as exc:
        raise AbpError(f"file {path} is not a valid ONNX model (truncated or corrupted?): "
                       f"re-run abp-deploy export ({type(exc).__name__})") from exc
    if session.get_providers()[0] != wanted[0]:
        raise AbpError(f"onnxruntime could not start {wanted[0]} for {path} (it fell back to "
                       f"{session.get_providers()[0]}): install onnxruntime-gpu and the CUDA and cuDNN libraries it needs")
    return session
