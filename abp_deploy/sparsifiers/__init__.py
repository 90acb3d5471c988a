"""Sparsifiers: how a run chooses which pretrained connections to keep, one class per granularity.

`build_sparsifier(cfg, method)` checks every sparsity option and returns the one the run needs;
the training loop (`prune.py`) only ever sees the `Sparsifier` interface (`base.py`).
Adding a granularity is one class here plus its entry in `build_sparsifier`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from abp_deploy.errors import AbpError
from abp_deploy.methods import Method
from abp_deploy.sparsifiers.base import FLOPS_REMOVED, MASKED_WEIGHTS_ZERO, WEIGHTS_REMOVED, Sparsifier
from abp_deploy.sparsifiers.dense import DenseSparsifier
from abp_deploy.sparsifiers.gates import BUDGETS, KINDS, GateSparsifier
from abp_deploy.sparsifiers.hybrid import HybridSparsifier
from abp_deploy.sparsifiers.scores import MagnitudeSparsifier, ScoreSparsifier

if TYPE_CHECKING:
    from abp_deploy.prune import PruneConfig

# block: the paper's mask on square tiles; hybrid: gates plus the paper's mask inside the kept units
GRANULARITIES = ("unstructured", "block", *KINDS, "hybrid")
GATED = (*KINDS, "hybrid")
# Gates are few (one per head or neuron) and each sums many weights' gradients, yet they learned best
# at 5x the weight scores' rate: +4.0 pt (structured 50%) and +0.9 pt (hybrid 70%), benchmarks/RESULTS.md.
DEFAULT_GATE_LR = 5e-2
DEFAULT_INNER_SPARSITY = 0.3
GATE_INITS = ("magnitude", "fisher")  # fisher: Kwon et al. 2022's importance as starting scores (importance.py)
DEFAULT_BLOCK = 32

__all__ = ["FLOPS_REMOVED", "GATED", "GRANULARITIES", "MASKED_WEIGHTS_ZERO", "WEIGHTS_REMOVED", "Sparsifier",
           "build_sparsifier"]


def _target(cfg: PruneConfig, method: Method) -> float:
    if method.mask is None:
        if cfg.sparsity not in (None, 0, 0.0):
            raise AbpError(f"--method finetune trains densely: drop --sparsity {cfg.sparsity} or pick a pruning method")
        return 0.0
    sparsity = 0.5 if cfg.sparsity is None else cfg.sparsity
    if not 0.0 <= sparsity < 1.0:
        raise AbpError(f"--sparsity {sparsity} is outside [0, 1): pass the fraction of weights to zero, e.g. 0.5")
    return sparsity


def _refuse_unused(cfg: PruneConfig) -> None:
    """Options that only some granularities read: passing one elsewhere is a mistake worth saying."""
    g = cfg.granularity
    if cfg.block_size is not None and g not in ("block", "hybrid"):
        raise AbpError(f"--block-size applies to --granularity block or hybrid, not {g}: drop it")
    if cfg.inner_sparsity is not None and g != "hybrid":
        raise AbpError("--inner-sparsity applies to --granularity hybrid only: drop it or use hybrid")
    if cfg.gate_lr is not None and g not in GATED:
        raise AbpError("--gate-lr applies to gated granularities (head, neuron, structured, hybrid): drop it")
    if cfg.gate_init != "magnitude" and g not in GATED:
        raise AbpError(f"--gate-init {cfg.gate_init} applies to gated granularities (head, neuron, structured, "
                       "hybrid): drop it")
    if cfg.gate_budget != "per-kind" and g not in ("structured", "hybrid"):
        raise AbpError(f"--gate-budget {cfg.gate_budget} ranks heads against neurons: use --granularity structured "
                       "or hybrid, or drop it")
    if cfg.unit_scales and g not in GATED:
        raise AbpError("--unit-scales learns one scale per head and neuron gate: use a gated granularity (head, "
                       "neuron, structured, hybrid) or drop it")


def build_sparsifier(cfg: PruneConfig, method: Method) -> Sparsifier:
    """The sparsifier a run's settings ask for, after checking every sparsity option (before any folder exists)."""
    target = _target(cfg, method)
    if cfg.score_init not in ("magnitude", "constant"):
        raise AbpError(f"--score-init {cfg.score_init} is unknown: choose magnitude or constant")
    if cfg.scope not in ("per-matrix", "global"):
        raise AbpError(f"--scope {cfg.scope} is unknown: choose per-matrix or global")
    if cfg.granularity not in GRANULARITIES:
        raise AbpError(f"--granularity {cfg.granularity} is unknown: choose {', '.join(GRANULARITIES)}")
    if cfg.gate_init not in GATE_INITS:
        raise AbpError(f"--gate-init {cfg.gate_init} is unknown: choose {' or '.join(GATE_INITS)}")
    if cfg.gate_budget not in BUDGETS:
        raise AbpError(f"--gate-budget {cfg.gate_budget} is unknown: choose {' or '.join(BUDGETS)}")
    _refuse_unused(cfg)
    if cfg.granularity != "unstructured" and method.mask != "score":
        raise AbpError(f"--granularity {cfg.granularity} learns scores, which --method {method.name} has none of: "
                       "use --method abp or movement")
    block = cfg.block_size if cfg.block_size is not None else (DEFAULT_BLOCK if cfg.granularity == "block" else 1)
    if block < 1:
        raise AbpError(f"--block-size {block} must be a positive tile side, e.g. 32")
    gate_lr = DEFAULT_GATE_LR if cfg.gate_lr is None else cfg.gate_lr
    if method.mask is None:
        return DenseSparsifier()
    if method.mask == "magnitude":
        return MagnitudeSparsifier(target, cfg.scope, cfg.score_init, cfg.seed, cfg.score_lr)
    def gates(granularity: str) -> GateSparsifier:
        return GateSparsifier(target, granularity, cfg.score_init, cfg.seed, gate_lr, cfg.gate_init, cfg.gate_budget,
                              cfg.max_length, cfg.unit_scales)

    if cfg.granularity in KINDS:
        return gates(cfg.granularity)
    if cfg.granularity == "hybrid":
        inner = DEFAULT_INNER_SPARSITY if cfg.inner_sparsity is None else cfg.inner_sparsity
        if not 0.0 <= inner < 1.0:
            raise AbpError(f"--inner-sparsity {inner} is outside [0, 1): pass the fraction of kept units' weights "
                           "to zero")
        return HybridSparsifier(gates("structured"),
                                ScoreSparsifier(inner, cfg.scope, cfg.score_init, cfg.seed, cfg.score_lr, block,
                                                granularity="hybrid"))
    return ScoreSparsifier(target, cfg.scope, cfg.score_init, cfg.seed, cfg.score_lr, block, cfg.granularity)
