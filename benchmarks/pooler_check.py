"""Was the backbone's pooler trained? Prints what the checkpoint says about it.

    .venv/bin/python benchmarks/pooler_check.py [--model minilm-l6]

A pooler that was never trained (sentence-transformers models read a mean of the tokens, not [CLS]
through `pooler.dense`) is a fixed random-like projection between a frozen, masked encoder and the
classifier; `abp-deploy prune --train-pooler` trains it with the head instead (issues 11 and 12).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import transformers

from abp_deploy.models import load_classifier, resolve_model
from abp_deploy.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    path = Path(resolve_model(args.model))
    model, missing = load_classifier(args.model, get_task("sst2"))
    pooler = model.base_model.pooler.dense
    ffn = model.base_model.encoder.layer[-1].output.dense
    print(f"model {args.model} ({path}); weights the checkpoint lacks: {sorted(missing)}")
    print(f"pooler.dense.weight std {pooler.weight.std():.4f} (last FFN output matrix: {ffn.weight.std():.4f}); "
          f"pooler.dense.bias max |b| {pooler.bias.abs().max():.4f}")
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = [k for k, v in json.loads(pooling.read_text()).items() if k.startswith("pooling_mode") and v]
        print(f"sentence-transformers pooling of this checkpoint: {', '.join(modes)}")


if __name__ == "__main__":
    main()
