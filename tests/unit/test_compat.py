"""Private APIs of PyFlink, Feast and uvicorn are used only behind flywheel/compat, which refuses a version it was not
checked against, with a message that says what to do."""

from __future__ import annotations

import ast
from importlib.metadata import version

import pytest

from flywheel.compat import feast as feast_private
from flywheel.compat import pyflink as flink_private
from flywheel.compat import require
from flywheel.compat import uvicorn as uvicorn_private
from flywheel.errors import FlywheelError
from flywheel.settings import REPO_ROOT

PRIVATE = {"_j_data_stream", "_python_worker_execution_mode", "_redis_key", "_get_client", "_get_provider",
           "http_protocol_class", "server_state"}  # fmt: skip


def test_the_pinned_versions_are_the_checked_ones():
    assert version("apache-flink") == flink_private.CHECKED
    assert version("feast") == feast_private.CHECKED
    assert version("uvicorn") == uvicorn_private.CHECKED


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


def test_string_keys_are_byte_for_byte_feasts(tmp_path):
    """The service joins entity-key bytes itself (fast); they must be the keys Feast writes and reads."""
    import random

    from feast import FeatureStore, RepoConfig
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    store = FeatureStore(
        config=RepoConfig(
            project="a_project",
            provider="local",
            registry=str(tmp_path / "registry.db"),
            online_store={"type": "redis", "connection_string": "127.0.0.1:1"},
            entity_key_serialization_version=3,
            repo_path=str(tmp_path),
        )  # fmt: skip
    )
    rng = random.Random(3)
    alphabet = "ab-_0Zé✓ü"
    for join_keys in (("user_id",), ("user_id", "item_category"), ("zeta", "alpha", "mid")):
        key = feast_private.string_key_builder(store, join_keys)
        for _ in range(200):
            values = tuple("".join(rng.choices(alphabet, k=rng.randrange(0, 12))) for _ in join_keys)
            entity = EntityKey(join_keys=list(join_keys), entity_values=[Value(string_val=v) for v in values])
            assert key(values) == feast_private.redis_key(store, entity), (join_keys, values)
