"""The run folder's mask file: exact round trip, and one clear line for any file whose bits do not fit its shapes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from abp_deploy.artifacts import load_mask, save_mask
from abp_deploy.errors import AbpError


@pytest.fixture()
def mask_file(tmp_path):
    torch.manual_seed(0)
    masks = {"encoder.layer.0.attention.self.query": torch.rand(32, 32) > 0.5, "odd": torch.rand(3, 5) > 0.5}
    save_mask(masks, tmp_path / "mask.safetensors")
    return tmp_path / "mask.safetensors", masks


def _rewrite(path, change_bits=lambda bits: bits, change_shapes=lambda shapes: shapes):
    with safe_open(str(path), "pt") as f:
        meta, packed = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    meta["shapes"] = json.dumps(change_shapes(json.loads(meta["shapes"])))
    save_file({name: change_bits(bits).clone() for name, bits in packed.items()}, str(path), metadata=meta)


def test_mask_round_trips_exactly_including_shapes_not_a_multiple_of_eight(mask_file):
    path, masks = mask_file
    loaded = load_mask(path)
    assert set(loaded) == set(masks) and all(torch.equal(loaded[n], masks[n]) for n in masks)


def test_mask_whose_bytes_cover_half_its_shape_is_refused_not_padded_with_zeros(mask_file):
    path, _ = mask_file
    _rewrite(path, change_bits=lambda bits: bits[: len(bits) // 2])
    with pytest.raises(AbpError, match=r"holds 64 bytes but its shape \[32, 32\] needs 128: the file is damaged"):
        load_mask(path)


def test_mask_whose_recorded_shape_is_larger_than_its_bits_is_refused(mask_file):
    path, _ = mask_file
    _rewrite(path, change_shapes=lambda shapes: shapes | {"odd": [3, 50]})
    with pytest.raises(AbpError, match=r"odd holds 2 bytes but its shape \[3, 50\] needs 19"):
        load_mask(path)


@pytest.mark.parametrize("change_shapes,message", [
    (lambda shapes: {k: v for k, v in shapes.items() if k != "odd"}, "shapes and bits for different matrices \\(odd\\)"),
    (lambda shapes: shapes | {"odd": "3x5"}, "no readable shapes"),
], ids=["shape-missing", "shape-not-a-list"])
def test_mask_with_damaged_shape_metadata_is_one_clear_line(mask_file, change_shapes, message):
    path, _ = mask_file
    _rewrite(path, change_shapes=change_shapes)
    with pytest.raises(AbpError, match=message):
        load_mask(path)
