"""abp-deploy: adapting by pruning for BERT-family encoders, from mask to ONNX artefact."""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from abp_deploy.errors import AbpError

try:
    __version__ = version("abp-deploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# The stage entry points, imported on first use so that `abp-deploy --help` does not load torch.
# (Functions named like their module, e.g. prune, stay in the module: the submodule import would shadow them.)
_LAZY = {"load_baked": "abp_deploy.bake", "load_run_model": "abp_deploy.apply", "PruneConfig": "abp_deploy.prune",
         "export_model": "abp_deploy.export_run", "BenchConfig": "abp_deploy.bench"}

__all__ = ["AbpError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'abp_deploy' has no attribute {name!r}")
