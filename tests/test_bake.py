"""Bake: heads and FFN neurons killed by hand-made masks are cut out, and the logits do not change."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import (AutoModelForSequenceClassification, BertTokenizerFast, RobertaConfig,
                          RobertaForSequenceClassification)

from abp_deploy.bake import SUMMARY_FILE, bake_model, load_baked, save_baked
from abp_deploy.errors import AbpError
from abp_deploy.structure import find_dead_structure
from abp_deploy.sublayers import attention_removed, ffn_removed

D, FFN = 8, 64  # tiny BERT: 4 heads of size 8 (hidden 32), FFN width 64, 2 layers
SENTENCES = ["the movie was very good", "bad", "it is not a great film and that was awful", "a"]


@pytest.fixture()
def tokenizer(tiny_model_dir) -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(tiny_model_dir)


@pytest.fixture()
def batch(tokenizer) -> dict:
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert not enc["attention_mask"].all()  # the batch really is padded
    return dict(enc)


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def randomize_linears(model: nn.Module) -> None:
    """Re-draw every Linear with PyTorch's default init (seeded).

    Fresh BERT Linears (std 0.02, zero biases) give near input-independent logits and zero constants
    to fold, which would make an exactness check at 1e-5 toothless.
    """
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()


@torch.no_grad()
def kill_head_output(layer: nn.Module, h: int) -> None:
    layer.attention.output.dense.weight[:, h * D:(h + 1) * D] = 0


@torch.no_grad()
def kill_head_value(layer: nn.Module, h: int) -> None:
    layer.attention.self.value.weight[h * D:(h + 1) * D] = 0


@torch.no_grad()
def kill_neuron_output(layer: nn.Module, i: int) -> None:
    layer.output.dense.weight[:, i] = 0


@torch.no_grad()
def kill_neuron_input(layer: nn.Module, i: int) -> None:
    layer.intermediate.dense.weight[i] = 0


@pytest.fixture()
def masked(tiny_classifier):
    """Layer 0 loses some heads and neurons both ways; layer 1 loses all of them (one is kept as zero)."""
    model = tiny_classifier
    randomize_linears(model)
    first, second = model.bert.encoder.layer
    kill_head_output(first, 1)
    kill_head_value(first, 2)
    for i in (3, 5):
        kill_neuron_output(first, i)
    for i in (10, 11):
        kill_neuron_input(first, i)
    kill_head_value(second, 0)
    for h in (1, 2, 3):
        kill_head_output(second, h)
    for i in range(FFN):
        kill_neuron_input(second, i)
    return model


def test_finds_exactly_the_hand_killed_heads_and_neurons(masked):
    first, second = find_dead_structure(masked).layers
    assert first.heads == {1: "out_zero", 2: "value_zero"}
    assert first.neurons == {3: "out_zero", 5: "out_zero", 10: "in_zero", 11: "in_zero"}
    assert second.heads == {0: "kept_as_zero", 1: "out_zero", 2: "out_zero", 3: "out_zero"}
    assert second.neurons == {0: "kept_as_zero", **{i: "in_zero" for i in range(1, FFN)}}
    assert (first.removable_heads, second.removable_heads) == ([1, 2], [1, 2, 3])
    assert (first.removable_neurons, second.removable_neurons) == ([3, 5, 10, 11], list(range(1, FFN)))


def output_biases(model: nn.Module) -> list[torch.Tensor]:
    """The biases that absorb folded constants (bake replaces their modules: look them up afresh)."""
    modules = [m for layer in model.bert.encoder.layer for m in (layer.attention.output, layer.output)]
    return [m.dense.bias if hasattr(m, "dense") else m.bias for m in modules]


def test_bake_keeps_logits_on_a_padded_batch(masked, batch):
    reference = logits(masked, batch)
    unfolded = [b.clone() for b in output_biases(masked)]
    bake_model(masked)
    torch.testing.assert_close(logits(masked, batch), reference, atol=1e-5, rtol=0)
    with torch.no_grad():  # cutting without folding the constants would not have been exact
        for bias, original in zip(output_biases(masked), unfolded):
            bias.copy_(original)
    assert (logits(masked, batch) - reference).abs().max() > 1e-3


def test_layer_with_every_unit_dead_loses_its_attention_and_ffn_sublayers(masked, batch):
    reference = logits(masked, batch)
    summary = bake_model(masked)
    first, second = masked.bert.encoder.layer
    assert attention_removed(second) and ffn_removed(second)
    assert not attention_removed(first) and not ffn_removed(first)
    assert summary.sublayers_removed == {"attention": [1], "ffn": [1]}
    assert not any(isinstance(m, nn.Linear) for m in second.modules())
    torch.testing.assert_close(logits(masked, batch), reference, atol=1e-5, rtol=0)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def layer_params(heads: int, ffn: int) -> int:
    width = heads * D
    return 3 * linear(32, width) + linear(width, 32) + linear(32, ffn) + linear(ffn, 32)


def layer_flops(heads: int, ffn: int, seq_len: int = 128) -> int:
    width = heads * D
    return 2 * (3 * 32 * width + width * 32 + 2 * 32 * ffn) + 2 * 2 * seq_len * width


def test_summary_matches_a_hand_count(masked):
    total_before = sum(p.numel() for p in masked.parameters())
    summary = bake_model(masked)
    assert summary.heads_removed == [2, 4] and summary.neurons_removed == [4, FFN]
    assert summary.heads == [2, 0] and summary.intermediate_sizes == [60, 0]
    assert masked.config.pruned_heads == {0: [1, 2], 1: [1, 2, 3]}
    assert masked.config.abp_intermediate_sizes == [60, 0]
    assert summary.encoder_params_before == 2 * layer_params(4, 64)
    assert summary.encoder_params_after == layer_params(2, 60) + 2 * 32  # layer 1: two output biases
    assert summary.params_before == total_before
    assert summary.params_before - summary.params_after == summary.encoder_params_before - summary.encoder_params_after
    assert summary.flops_per_token_before == 2 * layer_flops(4, 64)
    assert summary.flops_per_token_after == layer_flops(2, 60)


def test_baking_a_baked_model_removes_nothing(masked, batch):
    bake_model(masked)
    reference = logits(masked, batch)
    again = bake_model(masked)
    assert again.heads_removed == [0, 0] and again.neurons_removed == [0, 0]
    assert masked.config.pruned_heads == {0: [1, 2], 1: [1, 2, 3]}
    torch.testing.assert_close(logits(masked, batch), reference, atol=1e-6, rtol=0)


def test_bake_keeps_the_model_dtype(masked):
    masked.to(torch.bfloat16)
    bake_model(masked)
    assert {p.dtype for p in masked.parameters()} == {torch.bfloat16}


def test_bakes_roberta():
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=FFN, max_position_embeddings=40, pad_token_id=1)
    model = RobertaForSequenceClassification(config).eval()
    randomize_linears(model)
    layer = model.roberta.encoder.layer[0]
    kill_head_value(layer, 3)
    kill_neuron_input(layer, 7)
    ids = torch.randint(3, 50, (2, 9))
    ids[1, 5:] = config.pad_token_id
    batch = {"input_ids": ids, "attention_mask": (ids != config.pad_token_id).long()}
    reference = logits(model, batch)
    summary = bake_model(model)
    assert summary.heads == [3] and summary.intermediate_sizes == [FFN - 1]
    torch.testing.assert_close(logits(model, batch), reference, atol=1e-5, rtol=0)


@pytest.fixture()
def baked_dir(masked, tokenizer, tmp_path):
    summary = bake_model(masked)
    return save_baked(masked, tokenizer, tmp_path / "baked", summary)


def test_saved_model_reloads_in_a_fresh_process_with_equal_logits(masked, batch, baked_dir, tmp_path):
    reference = logits(masked, batch)
    assert json.loads((baked_dir / SUMMARY_FILE).read_text())["intermediate_sizes"] == [60, 0]
    script = (
        "import sys, torch\n"
        "from abp_deploy.bake import load_baked\n"
        "batch = torch.load(sys.argv[2], weights_only=True)\n"
        "out = {}\n"
        "for impl in ('eager', 'sdpa'):\n"
        "    model = load_baked(sys.argv[1], attn_implementation=impl)\n"
        "    with torch.no_grad():\n"
        "        out[impl] = (model.config._attn_implementation, model.training, model(**batch).logits)\n"
        "torch.save(out, sys.argv[3])\n"
    )
    torch.save(batch, tmp_path / "batch.pt")
    subprocess.run([sys.executable, "-c", script, str(baked_dir), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
                   check=True)
    for impl, (used, training, reloaded) in torch.load(tmp_path / "out.pt", weights_only=True).items():
        assert used == impl and not training
        torch.testing.assert_close(reloaded, reference, atol=1e-5, rtol=0)


def test_head_only_bake_reloads_with_plain_from_pretrained(tiny_classifier, tokenizer, batch, tmp_path):
    model = tiny_classifier
    randomize_linears(model)
    kill_head_output(model.bert.encoder.layer[0], 3)
    kill_head_value(model.bert.encoder.layer[1], 0)
    reference = logits(model, batch)
    out = save_baked(model, tokenizer, tmp_path / "baked", bake_model(model))
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert [l.attention.self.num_attention_heads for l in plain.bert.encoder.layer] == [3, 3]
    torch.testing.assert_close(logits(plain, batch), reference, atol=1e-5, rtol=0)


def truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def delete_weights(folder):
    (folder / "model.safetensors").unlink()


def mismatch_sizes(folder):
    config = json.loads((folder / "config.json").read_text())
    config["abp_intermediate_sizes"] = [61, 1]
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("damage", "message"), [
    (truncate_weights, "truncated or corrupted"),
    (delete_weights, "model.safetensors is missing"),
    (mismatch_sizes, "does not match the shapes"),
])
def test_load_baked_rejects_a_damaged_folder(baked_dir, damage, message):
    damage(baked_dir)
    with pytest.raises(AbpError, match=message) as info:
        load_baked(baked_dir)
    assert "\n" not in str(info.value) and "bake" in str(info.value)


def test_load_baked_rejects_a_missing_folder(tmp_path):
    with pytest.raises(AbpError, match="not a baked model folder"):
        load_baked(tmp_path / "nowhere")


def test_save_refuses_to_overwrite_unless_asked(masked, tokenizer, baked_dir):
    summary = bake_model(masked)
    with pytest.raises(AbpError, match="--overwrite"):
        save_baked(masked, tokenizer, baked_dir, summary)
    (baked_dir / "stale.txt").write_text("old")
    save_baked(masked, tokenizer, baked_dir, summary, overwrite=True)
    assert not (baked_dir / "stale.txt").exists() and (baked_dir / "model.safetensors").is_file()
    assert [p.name for p in baked_dir.parent.iterdir()] == ["baked"]


class FailingTokenizer:
    def save_pretrained(self, folder):
        raise OSError("disk full")


def test_failed_save_leaves_no_folder_behind(masked, tmp_path):
    summary = bake_model(masked)
    with pytest.raises(OSError, match="disk full"):
        save_baked(masked, FailingTokenizer(), tmp_path / "baked", summary)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "baked").mkdir()
    (tmp_path / "baked" / "bake_summary.json").write_text("old")  # an earlier bake, replaceable with overwrite
    with pytest.raises(OSError, match="disk full"):
        save_baked(masked, FailingTokenizer(), tmp_path / "baked", summary, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["baked"]
    assert (tmp_path / "baked" / "bake_summary.json").read_text() == "old"
