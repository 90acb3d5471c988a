"""ONNX export, graph optimisation, quantisation and verification (installed as abp_deploy.exporters)."""
