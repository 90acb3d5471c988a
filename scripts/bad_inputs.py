"""Run each bad input of the reliability issue as a user would, and print what it did as a Markdown table.

Builds a tiny random BERT, tiny GLUE-layout data, one tiny prune run and two ONNX exports in a
temporary folder, then runs `abp-deploy ...` in a subprocess per case (two at a time):
  .venv/bin/python scripts/bad_inputs.py
To add a case, append a `Case` to CASES: its `args` and `prepare` get the workspace and a scratch
folder of its own. tests/test_bad_inputs.py runs every case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the a is was good bad movie film great awful not".split()]


@dataclass(frozen=True)
class Workspace:
    """What the cases run against: a tiny model, GLUE-layout data, a finished run and its exports."""

    root: Path
    model: Path  # save_pretrained folder of a tiny BERT with a pooler
    glue: Path  # SST-2 train/dev in the GLUE layout
    run: Path  # a finished prune run of `model` on SST-2
    onnx: Path  # that run exported (no graph optimisation: quicker to build)
    onnx_big_vocab: Path  # an SST-2 export of another tiny BERT with a larger vocabulary


@dataclass(frozen=True)
class Case:
    """One bad input: the `abp-deploy` arguments a user types and the files it needs (made in `scratch`)."""

    name: str
    args: Callable[[Workspace, Path], list[str]]
    prepare: Callable[[Workspace, Path], None] = lambda ws, scratch: None
    valid: bool = False  # input the tool must accept (exit 0), e.g. a real-world file quirk
    pending: str | None = None  # why it does not behave yet (work owned elsewhere), else None


@dataclass(frozen=True)
class Outcome:
    """What a case did: exit code, the first line it printed on stderr, and whether a traceback showed."""

    case: Case
    exit_code: int
    message: str
    traceback: bool


def tiny_bert(out: Path, words: list[str], seed: int = 0, pooler: bool = True) -> Path:
    """A save_pretrained folder with a random 2-layer BERT (hidden 32, 4 heads) and a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_tsv(path: Path, header: str, rows: list[str]) -> Path:
    """A GLUE-layout tsv file (header line, then one example per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _sst2_rows(n: int) -> list[str]:
    return [f"the movie was {'good' if i % 2 else 'bad'}\t{i % 2}" for i in range(n)]


def tiny_prune(model: Path, glue: Path, out: Path) -> Path:
    """A two-step ABP run of a tiny model on the tiny SST-2 (seconds): enough for a complete run folder."""
    from abp_deploy.prune import PruneConfig, prune

    prune(PruneConfig(task="sst2", model=str(model), data_dir=str(glue), output=str(out), max_length=16,
                      batch_size=16, max_steps=2, checkpoint_every=0, progress=False, device="cpu"))
    return out


def build_workspace(root: Path) -> Workspace:
    """Make the tiny model, data, run and exports the cases need (about ten seconds on two cores)."""
    from abp_deploy.export_run import export_model
    from abp_deploy.exporters.pipeline import export_artifact
    from abp_deploy.models import load_classifier, load_tokenizer
    from abp_deploy.tasks import get_task

    model = tiny_bert(root / "tiny-bert", TINY_WORDS)
    glue = root / "glue"
    write_tsv(glue / "SST-2" / "train.tsv", "sentence\tlabel", _sst2_rows(32))
    write_tsv(glue / "SST-2" / "dev.tsv", "sentence\tlabel", _sst2_rows(8))
    run = tiny_prune(model, glue, root / "run")
    onnx = root / "onnx"
    export_model(run, onnx, optimize=None)
    big = tiny_bert(root / "tiny-bert-big-vocab", TINY_WORDS + [f"word{i}" for i in range(200)], seed=1)
    big_model, _ = load_classifier(str(big), get_task("sst2"))
    provenance = {"task": "sst2", "max_length": 16, "data_dir": str(glue), "method": "finetune", "sparsity": 0.0}
    export_artifact(big_model, load_tokenizer(str(big)), root / "onnx-big-vocab", optimize=None,
                    extra_report={"provenance": provenance})
    return Workspace(root, model, glue, run, onnx, root / "onnx-big-vocab")


def _short_mask(ws: Workspace, scratch: Path) -> None:
    """A run whose mask bytes cover half of each matrix, with a manifest re-hashed to match (as a buggy writer would)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from abp_deploy.artifacts import MANIFEST_FILE, MASK_FILE, file_sha256

    run = Path(shutil.copytree(ws.run, scratch / "run"))
    with safe_open(str(run / MASK_FILE), "pt") as f:
        meta, packed = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v[: len(v) // 2].clone() for k, v in packed.items()}, str(run / MASK_FILE), metadata=meta)
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    manifest["files"][MASK_FILE] = file_sha256(run / MASK_FILE)
    (run / MANIFEST_FILE).write_text(json.dumps(manifest))


def _dev_file(content: bytes) -> Callable[[Workspace, Path], None]:
    def prepare(ws: Workspace, scratch: Path) -> None:
        (scratch / "SST-2").mkdir(parents=True)
        (scratch / "SST-2" / "dev.tsv").write_bytes(content)
    return prepare


def _stsb_word_score(ws: Workspace, scratch: Path) -> None:
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    rows = [f"{i}\tmain\tf\t2012\t{i}\ts\ts\ta good film\ta great film\t{'high' if i == 3 else '4.2'}" for i in range(6)]
    write_tsv(scratch / "STS-B" / "train.tsv", header, rows)
    write_tsv(scratch / "STS-B" / "dev.tsv", header, rows[:2])


def _qqp_short_rows(ws: Workspace, scratch: Path) -> None:
    """QQP as distributed: a few rows of train.tsv lack the question2 and is_duplicate fields."""
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\tis the movie good\tis the film {'good' if i % 2 else 'bad'}\t{i % 2}"
            for i in range(20)]
    write_tsv(scratch / "QQP" / "train.tsv", header, rows[:7] + ["7\t14\t15\tis the movie good"] + rows[8:])
    write_tsv(scratch / "QQP" / "dev.tsv", header, rows[:4])


def _pooler_less_run(ws: Workspace, scratch: Path) -> None:
    """A finished prune run of a checkpoint saved without pooler weights (as sentence-transformers exports are)."""
    tiny_prune(tiny_bert(scratch / "no-pooler", TINY_WORDS, pooler=False), ws.glue, scratch / "run")


def _interrupted_run(config: str | None) -> Callable[[Workspace, Path], None]:
    """An interrupted run folder whose settings file is missing (None) or holds `config`."""
    def prepare(ws: Workspace, scratch: Path) -> None:
        work = scratch / "out.incomplete"
        (work / "checkpoint").mkdir(parents=True)
        (work / "checkpoint" / "step.json").write_text('{"step": 1}')
        if config is not None:
            (work / "prune_config.json").write_text(config)
    return prepare


def _locked(ws: Workspace, scratch: Path) -> None:
    """Another live process (this one) holds the output's lock, as a second prune on the same -o would see."""
    (scratch / "out.lock").write_text(str(os.getpid()))


def _user_folder(ws: Workspace, scratch: Path) -> None:
    (scratch / "mine").mkdir()
    (scratch / "mine" / "thesis.tex").write_text("not abp-deploy's")


def _report_without_model(ws: Workspace, scratch: Path) -> None:
    """An export folder whose model.onnx is gone (deleted, or a copy that skipped the large file)."""
    (scratch / "art").mkdir()
    shutil.copy(ws.onnx / "export_report.json", scratch / "art")


def _bench(scratch: Path, *args: str, repeats: int = 2, seq_len: int = 8) -> list[str]:
    return ["bench", *args, "-o", str(scratch / "report"), "--batch-sizes", "1", "--seq-lens", str(seq_len),
            "--repeats", str(repeats), "--warmup", "1", "--threads", "1", "--no-memory"]


def _prune(task: str, data_dir: Path, model: Path, scratch: Path, out: str | None = None) -> list[str]:
    return ["prune", "--task", task, "--model", str(model), "--data-dir", str(data_dir), "-o", out or str(scratch / "out"),
            "--max-steps", "1", "--max-length", "16", "--batch-size", "4", "--device", "cpu", "--no-progress"]


UTF16_DEV = "sentence\tlabel\ngood film\t1\n".encode("utf-16")
CASES: list[Case] = [
    Case("bench --repeats 0", lambda ws, d: _bench(d, str(ws.onnx), repeats=0)),
    Case("bench --seq-lens beyond the model's position embeddings",
         lambda ws, d: _bench(d, str(ws.onnx), seq_len=1000)),
    Case("bench of artefacts with different vocabularies", valid=True,
         args=lambda ws, d: _bench(d, str(ws.onnx), "--baseline", str(ws.onnx_big_vocab))),
    Case("bench of a folder without model.onnx", lambda ws, d: _bench(d, str(d / "art")),
         prepare=_report_without_model),
    Case("STS-B train.tsv with a non-numeric score", lambda ws, d: _prune("stsb", d, ws.model, d),
         prepare=_stsb_word_score),
    Case("empty dev.tsv", lambda ws, d: _bench(d, str(ws.onnx), "--data-dir", str(d)), prepare=_dev_file(b"")),
    Case("binary dev.tsv", lambda ws, d: _bench(d, str(ws.onnx), "--data-dir", str(d)),
         prepare=_dev_file(bytes(range(256)) * 64)),
    Case("UTF-16 dev.tsv", lambda ws, d: _bench(d, str(ws.onnx), "--data-dir", str(d)), prepare=_dev_file(UTF16_DEV)),
    Case("QQP train.tsv with a malformed short row (as in the official file)", valid=True,
         args=lambda ws, d: _prune("qqp", d, ws.model, d), prepare=_qqp_short_rows),
    Case("mask whose bytes cover half its recorded shapes, manifest hash matching",
         lambda ws, d: ["bake", str(d / "run"), "-o", str(d / "baked")], prepare=_short_mask),
    Case("bake of a run pruned from a checkpoint without pooler weights", valid=True,
         args=lambda ws, d: ["bake", str(d / "run"), "-o", str(d / "baked")], prepare=_pooler_less_run),
    Case("prune -o . (the working directory)",
         lambda ws, d: _prune("sst2", ws.glue, ws.model, d, out=".")),
    Case("--resume with prune_config.json missing", lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--resume"],
         prepare=_interrupted_run(None)),
    Case("--resume with a corrupt prune_config.json",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--resume"], prepare=_interrupted_run("{not json")),
    Case("--resume with nothing to resume", lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--resume"]),
    Case("--max-eval-samples 0", lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--max-eval-samples", "0"]),
    Case("--batch-size 0", lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--batch-size", "0"]),
    Case("--max-steps 0", lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--max-steps", "0"]),
    Case("--max-length above the model's 64 positions",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--max-length", "100"]),
    Case("a head budget that rounds to no head (--sparsity 0.95 of 8 heads)",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--granularity", "head", "--sparsity", "0.95"]),
    Case("--gate-budget flops with head-only gates",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--granularity", "head", "--gate-budget", "flops"]),
    Case("--unit-scales with the paper's unstructured mask",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--unit-scales"]),
    Case("--train-pooler with fine-tuning",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d), "--method", "finetune", "--train-pooler"]),
    Case("a second prune writing the same -o (lock held by a live process)",
         lambda ws, d: _prune("sst2", ws.glue, ws.model, d), prepare=_locked),
    Case("run --overwrite on a folder abp-deploy did not write",
         lambda ws, d: ["run", "-o", str(d / "mine"), "--overwrite", "--model", str(ws.model)], prepare=_user_folder),
    Case("prune --overwrite on a folder abp-deploy did not write",
         lambda ws, d: [*_prune("sst2", ws.glue, ws.model, d, out=str(d / "mine")), "--overwrite"],
         prepare=_user_folder),
]


def _placeholders(ws: Workspace, scratch: Path) -> list[tuple[str, str]]:
    """Temporary paths and their stable names in the table, longest first."""
    names = {scratch: "DIR", ws.onnx_big_vocab: "ONNX_BIG_VOCAB", ws.onnx: "ONNX", ws.run: "RUN", ws.model: "MODEL",
             ws.glue: "GLUE"}
    return sorted(((str(p), n) for p, n in names.items()), key=lambda pair: -len(pair[0]))


def _anonymise(text: str, pairs: list[tuple[str, str]]) -> str:
    for path, name in pairs:
        text = text.replace(path, name)
    return text


def run_case(case: Case, ws: Workspace, scratch: Path) -> Outcome:
    """Prepare the case's files, run `abp-deploy ARGS` as a user would, and record what came back."""
    scratch.mkdir(parents=True)
    case.prepare(ws, scratch)
    env = os.environ | {"COLUMNS": "400"}  # one line per message, however long
    done = subprocess.run([sys.executable, "-m", "abp_deploy.cli.app", *case.args(ws, scratch)], capture_output=True,
                          text=True, env=env, timeout=300)
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return Outcome(case, done.returncode, _anonymise(lines[0] if lines else "", _placeholders(ws, scratch)),
                   "Traceback" in done.stderr + done.stdout)


def run_all(ws: Workspace, cases: list[Case] = CASES, workers: int = 2) -> list[Outcome]:
    """Every case, `workers` at a time, in the order given."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda ic: run_case(ic[1], ws, ws.root / "cases" / str(ic[0])), enumerate(cases)))


def command(case: Case, ws: Workspace) -> str:
    """The case's command line with workspace paths named (MODEL, RUN, ONNX, GLUE, DIR)."""
    scratch = ws.root / "cases" / "N"
    return _anonymise(" ".join(["abp-deploy", *case.args(ws, scratch)]), _placeholders(ws, scratch))


def markdown(outcomes: list[Outcome], ws: Workspace) -> str:
    """One row per case: input, command, expected, exit code, first stderr line, traceback."""
    lines = ["| bad input | command | expected | exit code | first line of stderr | traceback |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        expected = ("accepted (exit 0)" if o.case.valid else "one-line error (exit 1)") + (
            f"; not yet: {o.case.pending}" if o.case.pending else "")
        message = o.message.replace("|", "\\|") or "(none)"
        lines.append(f"| {o.case.name} | `{command(o.case, ws)}` | {expected} | {o.exit_code} | {message} | "
                     f"{'yes' if o.traceback else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="abp-bad-inputs-") as tmp:
        ws = build_workspace(Path(tmp))
        print(markdown(run_all(ws), ws), end="")


if __name__ == "__main__":
    main()
