"""The official GLUE metrics, computed locally.

`evaluate.load("glue", ...)` fetches its scripts from the hub, which users behind a firewall and
our CI cannot reach, so the same formulas are computed with scikit-learn and SciPy here.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from abp_deploy.tasks import TaskSpec

_METRICS = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p),
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearmanr": lambda p, y: spearmanr(p, y)[0],
}


def predictions_from_logits(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids (argmax) for classification, the single output for regression."""
    return logits[:, 0] if task.is_regression else logits.argmax(axis=-1)


def compute_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics plus `score`, their mean (the GLUE leaderboard's per-task number)."""
    preds = predictions_from_logits(task, np.asarray(logits))
    out = {m: float(_METRICS[m](preds, np.asarray(labels))) for m in task.metrics}
    out["score"] = float(np.mean(list(out.values())))
    return out
