"""abp-deploy: adapting by pruning for BERT-family encoders, from mask to ONNX artefact."""

from importlib.metadata import PackageNotFoundError, version

from abp_deploy.errors import AbpError

try:
    __version__ = version("abp-deploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["AbpError", "__version__"]
