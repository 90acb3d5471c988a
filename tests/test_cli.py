"""The CLI as users run it: help, version, tasks, and one clear line with a non-zero exit on bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from abp_deploy import __version__
from abp_deploy.cli.app import app

runner = CliRunner()


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).output.strip() == f"abp-deploy {__version__}"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "prune" in result.output


def test_tasks_lists_metrics_and_labels():
    result = runner.invoke(app, ["tasks"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "matthews_correlation" in result.output and "not_entailment" in result.output


@pytest.mark.parametrize("args,message", [
    (["--task", "foo"], "unknown task 'foo'"),
    (["--sparsity", "1.5"], "--sparsity 1.5 is outside [0, 1)"),
    (["--method", "finetune", "--sparsity", "0.5"], "finetune trains densely"),
    (["--method", "lottery"], "unknown method 'lottery'"),
    (["--task", "qnli", "--data-dir", "/no/such/dir"], "does not exist"),
])
def test_bad_prune_input_is_one_line_and_exit_1(tmp_path, args, message):
    result = runner.invoke(app, ["prune", "-o", str(tmp_path / "run"), *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_prune_from_the_cli_writes_a_run(tiny_model_dir, tiny_glue_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["prune", "--task", "sst2", "--model", str(tiny_model_dir), "--data-dir",
                                 str(tiny_glue_dir), "-o", str(out), "--max-steps", "3", "--max-length", "16",
                                 "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "sparsity 0.5000" in " ".join(result.output.split())
    assert (out / "manifest.json").is_file()


def test_ctrl_c_prints_where_the_run_stopped_and_the_command_that_resumes_it(monkeypatch):
    import abp_deploy.prune as prune_module
    from abp_deploy.errors import RunInterrupted

    def interrupted(cfg):
        raise RunInterrupted("interrupted at step 6 of 12; the last checkpoint is step 4 in runs/x.incomplete")

    monkeypatch.setattr(prune_module, "prune", interrupted)
    monkeypatch.setattr("sys.argv", ["abp-deploy", "prune", "-o", "runs/x"])
    result = runner.invoke(app, ["prune", "-o", "runs/x"], env={"COLUMNS": "300"})
    assert result.exit_code == 130
    assert "last checkpoint is step 4" in result.output
    assert "resume with: abp-deploy prune -o runs/x --resume" in result.output


def test_a_real_run_stopped_by_sigterm_says_where_and_how_to_resume(tiny_model_dir, tiny_glue_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "abp_deploy.cli.app", "prune", "--task", "sst2", "--model", str(tiny_model_dir),
           "--data-dir", str(tiny_glue_dir), "-o", str(out), "--max-steps", "100000", "--max-length", "16",
           "--checkpoint-every", "2", "--device", "cpu", "--no-progress"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**__import__("os").environ, "COLUMNS": "300"})
    deadline = time.time() + 120
    while not (tmp_path / "run.incomplete" / "checkpoint" / "step.json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "last checkpoint is step" in stderr and "Traceback" not in stderr
    assert "resume with: abp-deploy prune --task sst2" in stderr and stderr.rstrip().endswith("--no-progress --resume")
    assert (tmp_path / "run.incomplete" / "checkpoint").is_dir() and not (tmp_path / "run.lock").exists()


def test_tables_piped_into_a_log_are_not_wrapped_at_80_columns():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}

    def widest_line(extra: dict[str, str]) -> int:
        out = subprocess.run([sys.executable, "-m", "abp_deploy.cli.app", "tasks"], capture_output=True, text=True,
                             env={**env, **extra}, check=True).stdout
        return max(len(line) for line in out.splitlines())

    assert widest_line({}) > 80
    assert widest_line({"COLUMNS": "60"}) <= 60
