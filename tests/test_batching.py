"""Length-grouped training batches and the token cache: less padding, same examples, same results on resume."""

from __future__ import annotations

import pytest
from transformers import BertTokenizerFast

from abp_deploy.batching import LengthGroupedBatches
from abp_deploy.data import _dataset
from abp_deploy.token_cache import cache_key, cached_tokenize


def _lengths(n: int) -> list[int]:
    return [(i * 37) % 61 + 1 for i in range(n)]


def test_grouped_batches_cover_every_example_once_per_epoch():
    sampler = LengthGroupedBatches(_lengths(1000), batch_size=32, seed=3, mega_batch=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for i in batch]
        assert sorted(seen) == list(range(1000)) and len(list(sampler)) == len(sampler) == 32


def test_grouped_batches_are_a_function_of_seed_and_epoch():
    a, b, c = (LengthGroupedBatches(_lengths(500), 16, seed) for seed in (1, 1, 2))
    assert list(a) == list(b) and list(a) != list(c)
    a.set_epoch(1)
    assert list(a) != list(b)


def test_grouped_batches_pad_far_less_than_random_ones():
    lengths = _lengths(3200)
    sampler = LengthGroupedBatches(lengths, 32, seed=0)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in sampler)
    assert padded < 1.1 * sum(lengths)  # random batches of these lengths carry ~1.9x the real tokens


@pytest.fixture()
def tokenizer(tiny_model_dir):
    return BertTokenizerFast.from_pretrained(tiny_model_dir)


def test_token_cache_reuses_an_entry_and_changes_key_with_tokenizer_or_max_length(tokenizer, tiny_model_dir, tmp_path):
    ds = _dataset(["the movie was good", "a bad film"], None, [1, 0])
    first = cached_tokenize(ds, tokenizer, 16, tmp_path)
    again = cached_tokenize(ds, tokenizer, 16, tmp_path)
    assert list(first["input_ids"]) == list(again["input_ids"]) and len(list(tmp_path.iterdir())) == 1
    assert cache_key(ds, tokenizer, 8) != cache_key(ds, tokenizer, 16)
    lower = BertTokenizerFast.from_pretrained(tiny_model_dir, do_lower_case=False)
    assert cache_key(ds, lower, 16) != cache_key(ds, tokenizer, 16)
    assert cache_key(_dataset(["the movie was good", "a bad film"], None, [0, 0]), tokenizer, 16) != \
        cache_key(ds, tokenizer, 16)
    short = cached_tokenize(ds, tokenizer, 4, tmp_path)
    assert max(len(x) for x in short["input_ids"]) == 4 and len(list(tmp_path.iterdir())) == 2
