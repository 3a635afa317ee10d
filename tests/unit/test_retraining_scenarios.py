"""The retraining stages on scripted scenarios: a normal week is promoted, a corrupted week is blocked by
Great Expectations, a model trained on shuffled labels is rejected by the gate, a promoted model that
turns out worse on fresh data is rolled back, and a crash between alias writes leaves the registry
consistent. Real training (CPU), real GE, a real registry on disk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.settings import load_settings
from training import pipeline, scenarios
from training.registry import Registry

pytestmark = pytest.mark.slow  # trains models: `make test-unit` skips it

START = datetime(2026, 1, 5, tzinfo=UTC)
ROWS = 12_000


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    # The scenarios' own training budget (fixed here, so changing flywheel.yaml cannot move their thresholds).
    cfg = load_settings({"FLYWHEEL_VAR_DIR": str(root), "FLYWHEEL_TRAINING__OPE__ROWS": "1500",
                         "FLYWHEEL_TRAINING__OPE__CANDIDATES": "40", "FLYWHEEL_TRAINING__EPOCHS": "4",
                         "FLYWHEEL_TRAINING__BATCH_SIZE": "1024"})  # fmt: skip
    w = scenarios.world(seed=3)

    def week(i: int, kind: str = "normal"):
        start = START + timedelta(days=7 * i)
        table = scenarios.render(w, ROWS, start, 7, seed=100 + i, kind=kind)
        return scenarios.write(table, root / "trainsets" / f"w{i}-{kind}", start, 7, f"w{i}-{kind}")

    return cfg, week


def run(cfg, trainset, mode, key, reference=None):
    pipeline.validate_stage(cfg, trainset, reference)
    version = pipeline.train_stage(cfg, trainset, mode, run_key=key)
    return pipeline.decide_stage(cfg, version)


def test_scenarios_in_order(env):
    cfg, week = env
    reg = pipeline.registry(cfg)

    first = run(cfg, week(0), "full", "full:w0")
    assert first.outcome == "promoted", first.reasons
    assert reg.aliases() == {"champion": first.version, "previous": None}

    normal = run(cfg, week(1), "incremental", "weekly:w1", reference=week(0))
    assert normal.outcome == "promoted", normal.reasons
    assert reg.aliases() == {"champion": normal.version, "previous": first.version}
    assert reg.get(normal.version).parent_version == first.version

    # Re-running the same interval changes nothing: same version, no second promotion.
    again = run(cfg, week(1), "incremental", "weekly:w1", reference=week(0))
    assert again.version == normal.version and again.outcome == "no_change"
    assert sum(e["decision"] == "promoted" for e in reg.audit()) == 2

    corrupted = run(cfg, week(2, "corrupted"), "incremental", "weekly:w2", reference=week(1))
    assert corrupted.outcome == "blocked_by_data"
    assert any("user_ctr_24h" in r for r in corrupted.reasons)
    assert any("item_impressions_7d" in r for r in corrupted.reasons)
    assert reg.aliases()["champion"] == normal.version

    shuffled = run(cfg, week(3, "shuffled"), "full", "full:w3")
    assert shuffled.outcome == "rejected_by_metrics", shuffled.reasons
    assert any("AUC" in r for r in shuffled.reasons)
    assert reg.aliases()["champion"] == normal.version

    # A drifted week promotes a model that learned the reversed world (on its own holdout it beats the
    # champion); fresh data from the normal world then shows it is worse than the previous one.
    drifted = run(cfg, week(4, "drifted"), "full", "full:w4")
    assert drifted.outcome == "promoted", drifted.reasons
    decision = pipeline.rollback_stage(cfg, week(5))
    assert decision.outcome == "rolled_back", decision.reasons
    assert reg.aliases() == {"champion": normal.version, "previous": None}
    decisions = [e["decision"] for e in reg.audit()]
    assert decisions == ["promoted", "promoted", "blocked_by_data", "rejected_by_metrics", "promoted", "rolled_back"]


def test_crash_between_alias_writes_leaves_the_registry_consistent(env, tmp_path):
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
