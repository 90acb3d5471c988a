"""The library versions that made an artefact, recorded in every manifest and report."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("abp-deploy", "torch", "transformers", "datasets", "accelerate", "onnx", "onnxruntime")


def versions() -> dict[str, str]:
    """Python and each of PACKAGES that is installed, by distribution name."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
