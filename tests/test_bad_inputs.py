"""Every case of scripts/bad_inputs.py, run as a user runs it: one `error:` line and exit 1 (or acceptance), no traceback."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bad_inputs.py"
_spec = importlib.util.spec_from_file_location("bad_inputs", SCRIPT)
bad_inputs = sys.modules.setdefault("bad_inputs", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bad_inputs)


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory) -> dict[str, object]:
    """All cases run once per session against one tiny workspace, two at a time."""
    workspace = bad_inputs.build_workspace(tmp_path_factory.mktemp("bad-inputs"))
    return {o.case.name: o for o in bad_inputs.run_all(workspace)}


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=case.pending)] if case.pending else []
    return pytest.param(case, id=re.sub(r"\W+", "-", case.name).strip("-"), marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in bad_inputs.CASES])
def test_bad_input_ends_in_one_error_line_or_is_accepted_never_in_a_traceback(outcomes, case):
    outcome = outcomes[case.name]
    assert not outcome.traceback, outcome.message
    if case.valid:
        assert outcome.exit_code == 0, outcome.message
    else:
        assert outcome.exit_code == 1 and outcome.message.startswith("error: "), outcome.message
