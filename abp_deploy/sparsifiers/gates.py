"""Structure gates: one learned keep/drop decision per attention head and/or FFN neuron, weights frozen.

A gate sits on the unit's slice of its output matrix (the structure map, `units.py`), so a closed
gate makes the unit contribute exactly nothing and bake cuts it with everything else it owns.
Budgets (`budget`):
- `per-kind` (default): gates are ranked globally per unit kind, so layers compete for one budget;
  heads and neurons keep the same fraction, which is exactly the kept fraction of the encoder's
  Linear weights. `--sparsity` = encoder Linear weights removed.
- `flops` (structured and hybrid): one ranking over heads *and* neurons of all layers against one
  budget in encoder FLOPs per token (a head costs what ~64 neurons cost in MiniLM-L6), so the
  scores decide how much attention versus FFN each layer keeps. `--sparsity` = encoder FLOPs
  removed, met to within one neuron's cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel

from abp_deploy.errors import AbpError
from abp_deploy.masking import GateMask, cubic_sparsity, kth_largest_threshold, topk_mask
from abp_deploy.sparsifiers.base import FLOPS_REMOVED, WEIGHTS_REMOVED, Sparsifier, own_parameters
from abp_deploy.sparsifiers.importance import fisher_scores, fit_head, scores_from_fisher
from abp_deploy.structure import encoder_layers, unit_flops
from abp_deploy.units import UNIT_KINDS, UnitKind, matrix_name, owned_weights, split_matrix_name

KINDS = {"head": ("head",), "neuron": ("neuron",), "structured": ("head", "neuron")}
BUDGETS = ("per-kind", "flops")
SCALE_LR = 1e-2  # unit scales: the rate of the prototype (one number per unit, starting at 1)

OpenUnits = dict[str, dict[int, torch.Tensor]]  # kind -> layer index -> boolean per unit


class GateSparsifier(Sparsifier):
    """Head and/or neuron gates (`granularity` head, neuron or structured) under a per-kind or FLOPs budget."""

    def __init__(self, target: float, granularity: str, score_init: str, seed: int, lr: float,
                 gate_init: str = "magnitude", budget: str = "per-kind", seq_len: int = 128,
                 unit_scales: bool = False):
        super().__init__(target)
        self.granularity, self.score_init, self.seed, self.lr = granularity, score_init, seed, lr
        self.gate_init, self.budget, self.seq_len, self.scaled = gate_init, budget, seq_len, unit_scales
        self.headline = FLOPS_REMOVED if budget == "flops" else WEIGHTS_REMOVED
        self.kinds: tuple[UnitKind, ...] = tuple(UNIT_KINDS[k] for k in KINDS[granularity])
        self.gated: dict[str, dict[int, nn.Linear]] = {}  # kind -> layer index -> the Linear its gates sit on
        self.widths: dict[str, int] = {}
        self.costs: dict[str, dict[int, int]] = {}  # kind -> layer index -> FLOPs per token of one unit
        self._order: list[tuple[str, int]] | None = None  # the FLOPs ranking's fixed order (_ranking_order)
        self._unit_costs = torch.zeros(0, dtype=torch.float64)

    def attach(self, model: PreTrainedModel, layers: dict[str, nn.Linear]) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        blocks = encoder_layers(model)
        for kind in self.kinds:
            units = sum(kind.count(layer) for layer in blocks)
            if self.budget == "per-kind" and round((1.0 - self.target) * units) < 1:
                most = (units - 0.5) / units
                raise AbpError(f"--sparsity {self.target} leaves no {kind.name} of {units} open: "
                               f"pass at most {most:.4f} (one {kind.name} kept)")
            self.widths[kind.name] = kind.width(blocks[0])
            self.costs[kind.name] = {i: unit_flops(layer, kind, self.seq_len) for i, layer in enumerate(blocks)}
            linears = {i: layer.get_submodule(kind.output) for i, layer in enumerate(blocks)}
            self.gated[kind.name] = linears
            for i in sorted(linears, key=lambda i: matrix_name(i, kind.output)):  # the name order of earlier releases
                weight = linears[i].weight
                parametrize.register_parametrization(
                    linears[i], "weight", GateMask(weight, self.widths[kind.name], self.score_init, 1e-4, generator,
                                                   scales=self.scaled))

    @staticmethod
    def _gate(layer: nn.Linear) -> GateMask:
        return next(p for p in layer.parametrizations.weight if isinstance(p, GateMask))

    def gate_scores(self) -> list[nn.Parameter]:
        """The gates' learnable scores, every kind and layer."""
        return [self._gate(layer).scores for linears in self.gated.values() for layer in linears.values()]

    def param_groups(self, model: nn.Module) -> list[dict]:
        groups = [{"params": own_parameters(model, self.gate_scores()), "lr": self.lr, "weight_decay": 0.0}]
        if self.scaled:
            scales = [self._gate(layer).scales for linears in self.gated.values() for layer in linears.values()]
            groups.append({"params": own_parameters(model, scales), "lr": SCALE_LR, "weight_decay": 0.0})
        return groups

    def _ranking_order(self) -> tuple[list[tuple[str, int]], torch.Tensor]:
        """(kind, layer) blocks of every gate in one fixed order, and each unit's FLOPs: built once, they never change."""
        if self._order is None:
            self._order = [(kind.name, i) for kind in self.kinds
                           for i in sorted(self.gated[kind.name], key=lambda i: matrix_name(i, kind.output))]
            self._unit_costs = torch.cat([
                torch.full((self._gate(self.gated[kind][i]).scores.numel(),), self.costs[kind][i], dtype=torch.float64)
                for kind, i in self._order])
        return self._order, self._unit_costs

    def _ranked(self) -> tuple[list[tuple[str, int]], torch.Tensor, torch.Tensor]:
        """Every gate of every kind in one fixed order: (kind, layer) blocks, the scores and each unit's FLOPs."""
        blocks, costs = self._ranking_order()
        scores = torch.cat([self._gate(self.gated[kind][i]).scores.detach().float().cpu() for kind, i in blocks])
        return blocks, scores, costs

    def _flops_open(self, keep: float, fill: bool) -> tuple[list[tuple[str, int]], torch.Tensor, torch.Tensor]:
        """Units opened by descending score while their FLOPs fit `keep` of the total.

        Without `fill`, the longest prefix of the ranking that fits (a threshold, for training); with
        it, later units that still fit are added too (greedy knapsack fill), so the kept FLOPs fall
        short of the budget by less than the cheapest unit left out.
        """
        blocks, scores, costs = self._ranked()
        budget = keep * float(costs.sum())
        order = torch.argsort(scores, descending=True, stable=True)
        fits = int(torch.searchsorted(torch.cumsum(costs[order], 0), torch.tensor([budget], dtype=torch.float64),
                                      right=True))
        opened = torch.zeros(scores.numel(), dtype=torch.bool)
        opened[order[:fits]] = True
        if fill:
            spent = float(costs[order[:fits]].sum())
            for unit in order[fits:].tolist():
                if spent + float(costs[unit]) <= budget:
                    opened[unit] = True
                    spent += float(costs[unit])
        return blocks, scores, opened

    @torch.no_grad()
    def calibrate(self, model: PreTrainedModel, batches: Callable[[], list[dict]]) -> None:
        """`gate_init="fisher"`: fit the head, then start every kind's gate scores from their Fisher information."""
        if self.gate_init != "fisher":
            return
        data = batches()
        with torch.enable_grad():
            fit_head(model, data)
            kinds = [[self._gate(linears[i]).scores for i in sorted(linears)] for linears in self.gated.values()]
            fisher = fisher_scores(model, data, [s for scores in kinds for s in scores])  # one pass, every kind
        if self.budget == "flops":  # one ranking: Fisher per FLOP (the greedy knapsack's order), z-scored jointly
            costs = [self.costs[kind][i] for kind, linears in self.gated.items() for i in sorted(linears)]
            flat = [s for scores in kinds for s in scores]
            for param, value in zip(flat, scores_from_fisher([f / c for f, c in zip(fisher, costs)])):
                param.copy_(value)
            return
        start = 0
        for scores in kinds:  # z-scored per kind: heads and neurons each compete for their own budget
            for param, value in zip(scores, scores_from_fisher(fisher[start:start + len(scores)])):
                param.copy_(value)
            start += len(scores)

    def set_progress(self, step: int, total: int) -> float:
        sparsity = cubic_sparsity(step, total, self.target)
        self.set_keep(1.0 - sparsity)
        return sparsity

    @torch.no_grad()
    def set_keep(self, keep: float) -> None:
        """Open the top `keep` fraction of gates of each kind (or of FLOPs, all kinds), ranked across layers."""
        if self.budget == "flops":
            _, scores, opened = self._flops_open(keep, fill=False)
            if opened.all():
                tau = torch.tensor(float("-inf"))
            else:  # the lowest opened score (nothing fits: above every score)
                tau = scores[opened].min() if opened.any() else torch.tensor(float("inf"))
            for linears in self.gated.values():
                for layer in linears.values():
                    self._gate(layer).threshold.copy_(tau)
            return
        for linears in self.gated.values():
            scores = torch.cat([self._gate(layer).scores.float().flatten() for layer in linears.values()])
            tau = kth_largest_threshold(scores, round(keep * scores.numel()))
            for layer in linears.values():
                self._gate(layer).threshold.copy_(tau)

    @torch.no_grad()
    def open_units(self) -> OpenUnits:
        """Which units the current thresholds leave open (during training)."""
        return {kind: {i: (self._gate(l).scores >= self._gate(l).threshold).cpu() for i, l in linears.items()}
                for kind, linears in self.gated.items()}

    @torch.no_grad()
    def exact_open_units(self, keep: float) -> OpenUnits:
        """Exactly the top `keep` fraction of each kind's gates (or of FLOPs, all kinds), ranked across layers."""
        out: OpenUnits = {}
        if self.budget == "flops":
            blocks, _, opened = self._flops_open(keep, fill=True)
            start = 0
            for kind, i in blocks:
                count = self._gate(self.gated[kind][i]).scores.numel()
                out.setdefault(kind, {})[i] = opened[start:start + count]
                start += count
            return out
        for kind in self.kinds:
            linears = self.gated[kind.name]
            order = sorted(linears, key=lambda i: matrix_name(i, kind.output))
            scores = [self._gate(linears[i]).scores.detach().float().cpu() for i in order]
            opened, start = topk_mask(torch.cat(scores), round(keep * sum(s.numel() for s in scores))), 0
            out[kind.name] = {}
            for i, s in zip(order, scores):
                out[kind.name][i] = opened[start:start + s.numel()]
                start += s.numel()
        return out

    def owned_weights(self, opened: OpenUnits, name: str, shape: tuple[int, int]) -> torch.Tensor | None:
        """The weights of matrix `name` that open units own (None: no gated kind owns any of it)."""
        where = split_matrix_name(name)
        if where is None:
            return None
        flags = None
        for kind in self.kinds:
            owned = owned_weights(kind, where[1], opened[kind.name][where[0]], self.widths[kind.name], shape)
            if owned is not None:
                flags = owned if flags is None else flags & owned
        return flags

    def final_masks(self) -> dict[str, torch.Tensor]:
        opened = self.exact_open_units(1.0 - self.target)
        return {matrix_name(i, kind.output): self.owned_weights(opened, matrix_name(i, kind.output),
                                                                tuple(linear.weight.shape))
                for kind in self.kinds for i, linear in self.gated[kind.name].items()}

    def unit_scales(self) -> dict[str, torch.Tensor]:
        if not self.scaled:
            return {}
        return {matrix_name(i, kind.output): self._gate(linear).scales.detach().float().cpu().clone()
                for kind in self.kinds for i, linear in self.gated[kind.name].items()}

    def detach(self) -> None:
        for linears in self.gated.values():
            for layer in linears.values():
                if parametrize.is_parametrized(layer, "weight"):
                    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)

    def extra_fields(self, masks: dict[str, torch.Tensor]) -> dict:
        return {"gate_lr": self.lr, "gate_init": self.gate_init, "gate_budget": self.budget,
                "unit_scales": self.scaled}
