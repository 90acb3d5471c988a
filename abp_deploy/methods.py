"""Training strategies: what trains and how masks are computed. One loop (prune.py) runs them all."""

from __future__ import annotations

from dataclasses import dataclass

from abp_deploy.errors import AbpError


@dataclass(frozen=True)
class Method:
    """A pruning or tuning method, as the single training loop sees it."""

    name: str
    trains_weights: bool  # do the pretrained weights change?
    mask: str | None  # "score" (learned), "magnitude" (|W|), or None (dense)
    summary: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("abp", False, "score",
           "adapting by pruning (default): pretrained weights frozen, learn which to keep, train the task head"),
    Method("movement", True, "score", "movement pruning (Sanh et al. 2020): fine-tune weights and learn scores"),
    Method("magnitude", True, "magnitude", "gradual magnitude pruning (Zhu & Gupta 2017) while fine-tuning"),
    Method("finetune", True, None, "dense fine-tuning, the baseline"),
]}


def get_method(name: str) -> Method:
    """Look a method up by name, with the list of valid names in the error."""
    if name not in METHODS:
        raise AbpError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name]
