"""`ensure_applied` runs `feast apply` (a real one, on a registry of the test's own) only when something an
apply depends on changed since the last one: the definitions, the environment, or the registry itself."""

from __future__ import annotations

import os

import pytest

from flywheel.clients import feast_store
from flywheel.settings import load_settings

pytestmark = pytest.mark.slow  # two `feast apply` processes


def test_apply_is_skipped_only_while_the_registry_is_the_one_it_wrote(tmp_path):
    cfg = load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path)})
    registry = tmp_path / "feast" / "registry.db"
    assert feast_store.ensure_applied(cfg) is True, "a var dir without a registry must be applied"
    assert registry.exists()

    assert feast_store.ensure_applied(cfg) is False, "nothing changed: no second apply"

    moved = load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_REDIS__PORT": "1"})
    assert feast_store._definitions_digest(moved) != feast_store._definitions_digest(cfg), (
        "another online store is another apply"
    )

    st = registry.stat()
    os.utime(registry, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # another writer touched the registry
    assert feast_store.ensure_applied(cfg) is True
    assert feast_store.ensure_applied(cfg) is False
