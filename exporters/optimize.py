"""Graph optimisation with onnxruntime's transformers optimizer, and a count of what actually fused.

Levels (optimum's names): O1 = onnxruntime's basic graph optimisations only; O2 = O1 + transformer
fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu); O3 = O2 with GELU
approximated by tanh (FastGelu), which moves logits by ~1e-3.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx
from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from abp_deploy.errors import AbpError

Level = Literal["O1", "O2", "O3"]
LEVELS: tuple[Level, ...] = ("O1", "O2", "O3")
FUSED_OP_TYPES = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
                  "LayerNormalization", "BiasGelu", "FastGelu", "Gelu")
# The optimizer's own logger (onnxruntime puts its transformers folder on sys.path, hence the bare name).
_ATTENTION_LOGGER = "fusion_attention"
# Logged for every layer whose q/k/v are narrower than the hidden size, i.e. every layer with pruned heads.
_RAGGED_HEADS_NOTICE = "Input hidden size"


@dataclass(frozen=True)
class FusionReport:
    """Fused node counts of an optimised graph, and the encoder layers whose attention did not fuse."""

    level: str
    layers: int
    fused: dict[str, int]
    missing_attention: dict[int, str] = field(default_factory=dict)

    @property
    def attention(self) -> int:
        """Fused attention nodes of either kind."""
        return self.fused["Attention"] + self.fused["MultiHeadAttention"]

    @property
    def complete(self) -> bool:
        """Every layer's attention fused (O1 fuses none by design, so it is always complete)."""
        return self.level == "O1" or (not self.missing_attention and self.attention == self.layers)


def _fusion_options(level: Level) -> FusionOptions:
    """Transformer fusions for O2/O3; the raw 2-D mask kept as the Attention mask input.

    The optimizer's BERT default (MaskIndexEnd) turns the mask into one length per row, which is
    only right for right-padded masks without holes; a 2-D mask is exact for any mask.
    """
    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    options.enable_gelu_approximation = level == "O3"
    return options


def _softmax_names(model: onnx.ModelProto) -> list[str]:
    """Names of the Softmax nodes in graph order: one per encoder layer's attention before fusion."""
    return [node.name for node in model.graph.node if node.op_type == "Softmax"]


@contextmanager
def _attention_fusion_log() -> Iterator[list[str]]:
    """Collect the attention fuser's messages (its only account of why a layer did not fuse)."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(_ATTENTION_LOGGER)
    handler, saved = _Collect(logging.DEBUG), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _missing_attention(raw: list[str], left: list[str], messages: list[str]) -> dict[int, str]:
    """Layer index -> reason, for each attention Softmax that is still in the optimised graph."""
    said = sorted({m for m in messages if not m.startswith(_RAGGED_HEADS_NOTICE)})
    hint = f"; onnxruntime's attention fuser said: {' | '.join(said)}" if said else ""
    return {raw.index(name): f"{name} is still in the graph: its subgraph did not match onnxruntime's "
                              f"attention fusion patterns{hint}" for name in left if name in raw}


def optimize_onnx(path: str | Path, level: Level, out_path: str | Path, strict: bool = False) -> FusionReport:
    """Optimise `path` at `level` into `out_path` and report what fused; `strict` raises if attention did not."""
    if level not in LEVELS:
        raise AbpError(f"unknown optimisation level {level!r}: use one of {', '.join(LEVELS)}")
    raw = _softmax_names(onnx.load(str(path), load_external_data=False))
    # num_heads=0, hidden_size=0: detect both per layer from the Reshape constants (ragged heads).
    with _attention_fusion_log() as messages:
        if level == "O1":
            optimized = optimize_model(str(path), model_type="bert", opt_level=1, only_onnxruntime=True)
        else:
            optimized = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=1,
                                       optimization_options=_fusion_options(level))
    optimized.save_model_to_file(str(out_path))
    counts = Counter(node.op_type for node in optimized.model.graph.node)
    fused = {op: counts[op] for op in FUSED_OP_TYPES}
    missing = {} if level == "O1" else _missing_attention(raw, _softmax_names(optimized.model), messages)
    report = FusionReport(level=level, layers=len(raw), fused=fused, missing_attention=missing)
    if strict and not report.complete:
        layer, reason = next(iter(missing.items()), ("?", "no unfused Softmax identified"))
        raise AbpError(f"attention fused in {report.attention} of {report.layers} layers at {level} (layer {layer}: "
                       f"{reason}): pass strict_fusion=False to ship it unfused")
    return report
