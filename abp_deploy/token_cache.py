"""Tokenise a split once per tokenizer, data and max length, and keep the result on disk.

A sweep runs many prunes of the same task: re-tokenising SST-2 (67k sentences) for each is wasted
time. The cache key hashes everything the token ids depend on (the tokenizer's full definition, the
examples themselves and the max length), so a change to any of them makes a new entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import datasets

from abp_deploy.data import tokenize

CACHE_ENV = "ABP_DEPLOY_CACHE"


def default_cache_dir() -> Path:
    """$ABP_DEPLOY_CACHE, else ~/.cache/abp_deploy/tokens."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "abp_deploy") / "tokens"


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # its truncation/padding state is whatever the last call left: not part of the definition
        spec = json.loads(backend.to_str())
        definition = json.dumps({k: v for k, v in spec.items() if k not in ("truncation", "padding")}, sort_keys=True)
    else:
        definition = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    settings = json.dumps({"class": type(tokenizer).__name__, "inputs": list(tokenizer.model_input_names)})
    return hashlib.sha256((definition + settings).encode()).hexdigest()


def _data_digest(ds: datasets.Dataset) -> str:
    h = hashlib.sha256()
    for column in ("text_a", "text_b", "label"):
        h.update(json.dumps(list(ds[column])).encode())
    return h.hexdigest()


def cache_key(ds: datasets.Dataset, tokenizer, max_length: int) -> str:
    """A name for the tokenised split that changes whenever the tokenizer, the examples or max length do."""
    parts = f"{_tokenizer_digest(tokenizer)}|{_data_digest(ds)}|{max_length}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def cached_tokenize(ds: datasets.Dataset, tokenizer, max_length: int, cache_dir: Path | None) -> datasets.Dataset:
    """`data.tokenize`, read from `cache_dir` when this exact split was tokenised before (None: no cache)."""
    if cache_dir is None:
        return tokenize(ds, tokenizer, max_length)
    entry = Path(cache_dir) / cache_key(ds, tokenizer, max_length)
    if (entry / "dataset_info.json").is_file():
        try:
            return datasets.load_from_disk(str(entry))
        except (OSError, ValueError, FileNotFoundError):
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry is rebuilt below
    out = tokenize(ds, tokenizer, max_length)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    out.save_to_disk(str(tmp))
    try:
        tmp.replace(entry)  # another process may have written it first: theirs is the same
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(entry))
