"""Knowledge distillation from a finished dense run: a training signal for the mask, never new weights.

Structured masks lose the capacity that fine-tuning would add, so the pruned student learns better
from the dense fine-tuned teacher's soft targets than from hard labels alone (Hinton et al. 2015;
CoFi, Xia et al. 2022). Only the mask scores and task head see this loss: the adapting-by-pruning
rule (pretrained weights frozen) holds unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from abp_deploy.apply import load_run_model
from abp_deploy.errors import AbpError
from abp_deploy.tasks import TaskSpec


def load_teacher(run_dir: str | Path, task: TaskSpec, tokenizer) -> PreTrainedModel:
    """The model of a finished run, checked to answer the same task with the same tokens as the student."""
    if not Path(run_dir).is_dir():
        raise AbpError(f"--distill-from {run_dir} is not a folder: pass a finished prune run (e.g. --method finetune)")
    teacher, teacher_tokenizer, teacher_task, _ = load_run_model(run_dir)
    if teacher_task.name != task.name:
        raise AbpError(f"--distill-from {run_dir} was trained on {teacher_task.name}, not {task.name}: "
                       f"pass a run of --task {task.name}")
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise AbpError(f"--distill-from {run_dir} uses another tokenizer than the student's model: "
                       "pass a teacher run of a model with the same vocabulary")
    teacher.requires_grad_(False)
    return teacher.eval()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 alpha: float, temperature: float) -> torch.Tensor:
    """(1-α)·task loss + α·soft-target loss (T²-scaled KL for classes, MSE for regression)."""
    s, t = student_logits.float(), teacher_logits.float()
    if s.shape[-1] == 1:  # regression (STS-B): match the teacher's score
        hard = F.mse_loss(s.squeeze(-1), labels.float())
        soft = F.mse_loss(s, t)
    else:
        hard = F.cross_entropy(s, labels)
        soft = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                        reduction="batchmean", log_target=True) * temperature ** 2
    return (1.0 - alpha) * hard + alpha * soft
