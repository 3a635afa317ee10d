"""Private APIs of PyFlink and Feast are used only behind flywheel/compat, which refuses a version it was not
checked against, with a message that says what to do."""

from __future__ import annotations

import ast
from importlib.metadata import version

import pytest

from flywheel.compat import feast as feast_private
from flywheel.compat import pyflink as flink_private
from flywheel.compat import require
from flywheel.errors import FlywheelError
from flywheel.settings import REPO_ROOT

PRIVATE = {"_j_data_stream", "_python_worker_execution_mode", "_redis_key", "_get_client", "_get_provider"}


def test_the_pinned_versions_are_the_checked_ones():
    assert version("apache-flink") == flink_private.CHECKED
    assert version("feast") == feast_private.CHECKED


def test_another_version_is_refused_naming_the_fix():
    with pytest.raises(FlywheelError, match=r"checked against 0\.1\.0, but .* is installed: re-check them"):
        require("feast", "0.1.0", "flywheel.compat.feast")


def test_no_private_api_outside_flywheel_compat():
    used = {}
    for pkg in ("flywheel", "flink_jobs", "feature_repo", "training", "validation", "benchmarks", "dags"):
        for path in (REPO_ROOT / pkg).rglob("*.py"):
            if path.parent.name == "compat":
                continue
            tree = ast.parse(path.read_text())
            names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
            if found := names & PRIVATE:
                used[str(path.relative_to(REPO_ROOT))] = sorted(found)
    assert not used, f"go through flywheel/compat: {used}"
