"""Serve an exported folder with onnxruntime, tokenizers and numpy alone: texts in, labels and scores out.

No torch or transformers is imported, so an inference service installs three small wheels. Inputs are
tokenised once, sorted by length, cut into batches padded only to their own longest member, and the
results put back in input order: short sentences do not pay for long ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from abp_deploy.errors import AbpError
from abp_deploy.exporters.loading import REPORT_FILE, open_session

Inputs = Sequence[str] | Sequence[tuple[str, str]]
_FEEDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


@dataclass(frozen=True)
class Prediction:
    """One input's answer: the label and its probability; for regression `label` is None and `score` the value."""

    label: str | None
    score: float


def _read_json(path: Path) -> dict:
    """A JSON file of the folder, or {} when the export did not write it."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _pad_token(tokenizer_config: dict) -> str:
    """The pad token as tokenizer_config.json names it (a string, or an AddedToken dict)."""
    token = tokenizer_config.get("pad_token", "[PAD]")
    return token["content"] if isinstance(token, dict) else token


class Classifier:
    """A sequence classifier over a folder written by `abp-deploy export` (model.onnx, tokenizer.json, config.json).

    `providers` defaults to the CPU; `threads` sets onnxruntime's intra-op threads; `max_length`
    defaults to the length the model was trained and scored at (the export's provenance).
    """

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 max_length: int | None = None) -> None:
        folder = Path(folder)
        missing = [name for name in ("tokenizer.json", "config.json") if not (folder / name).is_file()]
        if missing:
            raise AbpError(f"{folder} has no {' or '.join(missing)}: pass a folder written by abp-deploy export")
        self.session = open_session(folder, providers=providers, threads=threads)
        config = _read_json(folder / "config.json")
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        self.max_length = (max_length or _read_json(folder / REPORT_FILE).get("provenance", {}).get("max_length")
                           or min(tokenizer_config.get("model_max_length", 512), config["max_position_embeddings"]))
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        self.regression = len(self.labels) == 1  # one output: transformers' regression head
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad = self.tokenizer.padding or {}
        self.tokenizer.no_padding()  # batches are padded one by one, to their own longest member
        self.tokenizer.enable_truncation(self.max_length)
        token = pad.get("pad_token") or _pad_token(tokenizer_config)
        pad_id = self.tokenizer.token_to_id(token)
        if pad_id is None:
            raise AbpError(f"the pad token {token!r} of {folder} is not in its tokenizer.json: re-run abp-deploy export")
        self._pad = {"pad_id": pad_id, "pad_token": token, "pad_type_id": pad.get("pad_type_id", 0),
                     "direction": pad.get("direction", tokenizer_config.get("padding_side", "right"))}
        self._input_names = [i.name for i in self.session.get_inputs()]

    def encode(self, inputs: Inputs) -> list[Encoding]:
        """Tokenised, truncated, unpadded encodings of texts or (text, text) pairs."""
        if isinstance(inputs, str):
            raise AbpError("pass a list of texts (or of (text, text) pairs), not a single string")
        return self.tokenizer.encode_batch(list(inputs))

    @staticmethod
    def _batches(encodings: list[Encoding], batch_size: int) -> list[np.ndarray]:
        order = np.argsort([len(e) for e in encodings], kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def length_batches(self, inputs: Inputs, batch_size: int = 32) -> list[np.ndarray]:
        """The input indices of each batch that `logits` runs, shortest inputs first."""
        return self._batches(self.encode(inputs), batch_size)

    def logits(self, inputs: Inputs, batch_size: int = 32) -> np.ndarray:
        """The model's outputs for every input, in input order, computed in length-sorted batches."""
        if batch_size < 1:
            raise AbpError(f"batch_size must be at least 1, not {batch_size}")
        encodings = self.encode(inputs)
        out: np.ndarray | None = None
        for index in self._batches(encodings, batch_size):
            batch = [encodings[i] for i in index]
            longest = max(len(e) for e in batch)
            for e in batch:
                e.pad(longest, **self._pad)
            feeds = {name: np.array([getattr(e, _FEEDS[name]) for e in batch], dtype=np.int64)
                     for name in self._input_names}
            result = self.session.run(None, feeds)[0]
            if out is None:
                out = np.empty((len(encodings), *result.shape[1:]), dtype=result.dtype)
            out[index] = result
        return out if out is not None else np.empty((0, len(self.labels)), dtype=np.float32)

    def predict(self, inputs: Inputs, batch_size: int = 32) -> list[Prediction]:
        """A label and its softmax probability per input (regression: the predicted value), in input order."""
        logits = self.logits(inputs, batch_size)
        if self.regression:
            return [Prediction(None, float(v)) for v in logits[:, 0]]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        best = probabilities.argmax(axis=1)
        return [Prediction(self.labels[b], float(p[b])) for b, p in zip(best, probabilities)]
