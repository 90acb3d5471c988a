"""All-or-nothing outputs: an old artefact survives any failure of its replacement; --overwrite is fenced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abp_deploy.atomic import publish, refuse_existing, write_json
from abp_deploy.errors import AbpError


def _folder(path: Path, marker: str, content: str) -> Path:
    path.mkdir(parents=True)
    (path / marker).write_text(content)
    return path


def test_publish_replaces_an_old_artefact_and_leaves_nothing_aside(tmp_path):
    _folder(tmp_path / "out", "manifest.json", "old")
    publish(_folder(tmp_path / "work", "manifest.json", "new"), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_publish_puts_the_old_artefact_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    _folder(tmp_path / "out", "manifest.json", "old")
    work = _folder(tmp_path / "work", "manifest.json", "new")
    real = Path.replace

    def failing(self, target):
        if self == work:
            raise OSError("disk gone")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        publish(work, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "manifest.json").read_text() == "old"


def test_overwrite_refuses_folders_abp_deploy_did_not_write_and_the_working_directory(tmp_path, monkeypatch):
    _folder(tmp_path / "mine", "thesis.tex", "precious")
    with pytest.raises(AbpError, match="was not written by abp-deploy"):
        refuse_existing(tmp_path / "mine", overwrite=True)
    monkeypatch.chdir(tmp_path / "mine")
    for path in (Path("."), Path(".."), Path.home()):
        with pytest.raises(AbpError, match="working directory, a parent of it, or the home folder"):
            refuse_existing(path, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_write_json_leaves_the_old_file_whole_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "job.json"
    write_json(path, {"a": 1})
    real = Path.write_text

    def crash_halfway(self, data, *args, **kwargs):  # a full disk or a kill in the middle of the write
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"a": 2, "b": [1, 2, 3]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]
