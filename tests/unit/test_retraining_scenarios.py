"""The retraining stages on scripted scenarios, on three seeds: a normal week is promoted, a corrupted
week is blocked by Great Expectations, a model trained on shuffled labels is rejected by the gate (by its
off-policy rule alone too), a promoted model that turns out worse on fresh data is rolled back, and a
crash between alias writes leaves the registry consistent. Real training (CPU), real GE, a real registry
on disk, off-policy evaluation against the scenario's own feature store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.settings import load_settings
from training import pipeline, scenarios
from training.registry import Registry

pytestmark = pytest.mark.slow  # trains models: `make test-unit` skips it

START = datetime(2026, 1, 5, tzinfo=UTC)
ROWS = 30_000
SEEDS = (3, 4, 5)  # the decisions must be right on every one of them
# The scenarios' own training budget (fixed here, so changing flywheel.yaml cannot move their thresholds).
BUDGET = {"FLYWHEEL_TRAINING__OPE__ROWS": "6000", "FLYWHEEL_TRAINING__OPE__CANDIDATES": "30",
          "FLYWHEEL_TRAINING__EPOCHS": "4", "FLYWHEEL_TRAINING__BATCH_SIZE": "1024",
          "FLYWHEEL_VALIDATION__DATA_DOCS": "false"}  # fmt: skip  # Data Docs: built and checked in test_validation
NO_AUC_RULES = {"FLYWHEEL_TRAINING__GATE__MIN_AUC": "0", "FLYWHEEL_TRAINING__GATE__MAX_ECE": "1",
                "FLYWHEEL_TRAINING__GATE__MAX_AUC_DROP": "1",
                "FLYWHEEL_TRAINING__GATE__MAX_LOGLOSS_RISE": "1e9"}  # fmt: skip


def scenario(root, seed):
    cfg = load_settings({"FLYWHEEL_VAR_DIR": str(root), **BUDGET})
    w = scenarios.world(seed=seed)

    def week(i: int, kind: str = "normal"):
        start = START + timedelta(days=7 * i)
        table, store = scenarios.render(w, ROWS, start, 7, seed=100 + i, kind=kind)
        return scenarios.write(table, root / "trainsets" / f"w{i}-{kind}", start, 7, f"w{i}-{kind}"), store

    return cfg, week


def run(cfg, week, mode, key, reference=None):
    path, store = week
    pipeline.validate_stage(cfg, path, reference[0] if reference else None)
    version = pipeline.train_stage(cfg, path, mode, run_key=key, features=store)
    return pipeline.decide_stage(cfg, version)


@pytest.mark.parametrize("seed", SEEDS)
def test_scenarios_in_order(tmp_path, seed):
    cfg, week = scenario(tmp_path, seed)
    reg = pipeline.registry(cfg)

    first = run(cfg, week(0), "full", "full:w0")
    assert first.outcome == "promoted", first.reasons
    assert reg.aliases() == {"champion": first.version, "previous": None}

    w0, w1 = week(0), week(1)
    normal = run(cfg, w1, "incremental", "weekly:w1", reference=w0)
    assert normal.outcome == "promoted", normal.reasons
    assert reg.aliases() == {"champion": normal.version, "previous": first.version}
    assert reg.get(normal.version).parent_version == first.version

    # Re-running the same interval changes nothing: same version, no second promotion.
    again = run(cfg, w1, "incremental", "weekly:w1", reference=w0)
    assert again.version == normal.version and again.outcome == "no_change"
    assert sum(e["decision"] == "promoted" for e in reg.audit()) == 2

    corrupted = run(cfg, week(2, "corrupted"), "incremental", "weekly:w2", reference=w1)
    assert corrupted.outcome == "blocked_by_data"
    assert any("user_ctr_24h" in r for r in corrupted.reasons)
    assert any("item_impressions_7d" in r for r in corrupted.reasons)
    assert reg.aliases()["champion"] == normal.version

    # A model that learned nothing: rejected, and the off-policy rule alone would reject it too.
    shuffled = run(cfg, week(3, "shuffled"), "full", "full:w3")
    assert shuffled.outcome == "rejected_by_metrics", shuffled.reasons
    assert any("AUC" in r for r in shuffled.reasons)
    alone = pipeline.gate(load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path), **BUDGET, **NO_AUC_RULES}),
                          reg.get(shuffled.version))  # fmt: skip
    assert len(alone) == 1 and alone[0].startswith(
        f"off-policy value (snips) significantly below champion {normal.version}"
    )
    assert reg.aliases()["champion"] == normal.version

    # A drifted week promotes a model that learned the reversed world (on its own holdout it beats the
    # champion); fresh data from the normal world then shows it is worse than the previous one.
    drifted = run(cfg, week(4, "drifted"), "full", "full:w4")
    assert drifted.outcome == "promoted", drifted.reasons
    decision = pipeline.rollback_stage(cfg, week(5)[0])
    assert decision.outcome == "rolled_back", decision.reasons
    assert reg.aliases() == {"champion": normal.version, "previous": None}
    decisions = [e["decision"] for e in reg.audit()]
    assert decisions == ["promoted", "promoted", "blocked_by_data", "rejected_by_metrics", "promoted", "rolled_back"]


def test_crash_between_alias_writes_leaves_the_registry_consistent(tmp_path):
    import torch

    from training.registry import ModelVersion

    reg = Registry(tmp_path / "registry")
    mv = lambda: ModelVersion("", "full", None, {}, "x", "ranker_v1", "1", {})  # noqa: E731
    a = reg.register({"w": torch.zeros(2)}, mv()).version
    b = reg.register({"w": torch.ones(2)}, mv()).version
    reg.promote(a, ["first"])

    def crash():
        raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        reg.promote(b, ["second"], before_commit=crash)
    assert reg.aliases() == {"champion": a, "previous": None}  # the old pair, whole
    assert [e["decision"] for e in reg.audit()] == ["promoted"]  # no decision recorded for the crash
    assert not list((tmp_path / "registry").glob(".aliases.json.*"))  # no temp file left behind
    assert reg.promote(b, ["second"])
    assert reg.aliases() == {"champion": b, "previous": a}
    assert torch.equal(reg.load_state(b)["w"], torch.ones(2))

    (tmp_path / "registry" / "versions" / b / "model.pt").write_bytes(b"tampered")
    with pytest.raises(Exception, match="sha256"):
        reg.load_state(b)


KILLED_WHILE_REGISTERING = """
import os, signal, sys, torch
from training.registry import ModelVersion, Registry
mv = ModelVersion("", "full", None, {}, "x", "ranker_v1", "1", {}, run_key="weekly:1")
Registry(__import__("pathlib").Path(sys.argv[1])).register(
    {"w": torch.ones(2)}, mv, before_commit=lambda: os.kill(os.getpid(), signal.SIGKILL)
)
"""


def test_a_writer_killed_before_its_version_is_whole_leaves_no_version(tmp_path):
    """SIGKILL (no cleanup runs) after the weights and metadata are written, before the rename: the
    registry lists no version, the run key is free, and the next register takes the number and cleans up."""
    import signal
    import subprocess
    import sys

    import torch

    from flywheel.settings import REPO_ROOT
    from training.registry import ModelVersion

    root = tmp_path / "registry"
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_REGISTERING, str(root)], cwd=REPO_ROOT, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert [p.name for p in (root / "versions").iterdir()][0].startswith(".new-"), "the crash left no temp folder"
    reg = Registry(root)
    assert reg.versions() == [] and reg.find_run("weekly:1") is None
    again = ModelVersion("", "full", None, {}, "x", "ranker_v1", "1", {}, run_key="weekly:1")
    mv = reg.register({"w": torch.zeros(2)}, again)
    assert mv.version == "v0001" and [p.name for p in (root / "versions").iterdir()] == ["v0001"]
    assert torch.equal(reg.load_state("v0001")["w"], torch.zeros(2))
