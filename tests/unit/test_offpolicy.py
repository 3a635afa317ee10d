"""Off-policy evaluation against a world with a known answer: the serving policy's estimated click rate
matches the true one on three seeds (every logged row counted, rows outside the choice set at weight 0),
and the evaluated policy depends only on the row's user and time, not on the item the logger showed."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
import torch

from flywheel import policy
from flywheel.settings import load_settings
from training import offpolicy, scenarios
from training.model import ModelConfig, Ranker

pytestmark = pytest.mark.slow  # evaluates policies over thousands of rows: `make test-unit` skips it

START = datetime(2026, 1, 5, tzinfo=UTC)


@pytest.fixture
def cfg(tmp_path):
    return load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_TRAINING__OPE__ROWS": "4000",
                          "FLYWHEEL_TRAINING__OPE__CANDIDATES": "30"})  # fmt: skip


def week(seed: int):
    w = scenarios.world(seed)
    table, store = scenarios.render(w, 20_000, START, 7, seed=100)
    cut = int(table.num_rows * 0.8)
    return w, table.slice(0, cut), table.slice(cut), store


def model_for(table: pa.Table, seed: int) -> tuple[Ranker, ModelConfig]:
    """An untrained, seeded model: some policy that is neither the logger's nor uniform. Its output bias is
    set to the click rate's logit (the policy, a softmax, does not move) so that DR's reward model is sane."""
    torch.manual_seed(seed)
    dense = tuple(c for c in table.column_names if c not in scenarios._BASE and not c.startswith("label_"))
    mcfg = ModelConfig(dense=dense)
    model = Ranker(mcfg)
    rate = float(np.mean(table.column("label_click").to_numpy()))
    with torch.no_grad():
        model.top[-1].bias.fill_(float(np.log(rate / (1 - rate))))
    return model, mcfg


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_estimates_match_the_worlds_true_value(cfg, seed):
    w, train, holdout, store = week(seed)
    setup = offpolicy.setup(train, holdout, cfg, store)
    model = model_for(train, seed)
    report = offpolicy.evaluate({"model": model}, setup, train, cfg, reward_model="model")
    assert report["rows"] == holdout.num_rows and 0.2 < report["coverage"] < 0.9  # every row, not only covered
    logits = offpolicy.score(*model, setup).logits
    pi = policy.serving_marginals(logits, setup.slots, cfg.policy.temperature, cfg.policy.epsilon)
    users = np.array([int(u[1:]) for u in setup.rows.column("user_id").to_pylist()])
    items = np.array([int(i[1:]) for i in setup.candidates])
    at_slot = pi[np.arange(len(users)), :, setup.slot]
    truth = scenarios.true_value(w, users, setup.slot, at_slot, items)
    for name in ("ips", "snips", "dr"):
        e = report["policies"]["model"][name]
        se = (e["ci_high"] - e["ci_low"]) / 3.92
        assert abs(e["value"] - truth) < 3 * se, (name, e, truth)
    random = report["policies"]["random"]["ips"]
    true_random = scenarios.true_value(w, users, setup.slot, np.full_like(at_slot, 1 / len(items)), items)
    assert abs(random["value"] - true_random) < 3 * (random["ci_high"] - random["ci_low"]) / 3.92


def test_the_evaluated_policy_ignores_the_logged_items_columns(cfg):
    """Scramble every column that describes the logged item (its item features, its user x category
    features, their missing flags) across rows: the policy over the candidates must not move."""
    _, train, holdout, store = week(3)
    model = model_for(train, 3)
    before = offpolicy.score(*model, offpolicy.setup(train, holdout, cfg, store)).logits
    keys = ("item_id", "item_category")  # which item it was stays: only what the row says about it changes
    prefixes = ("item_", "cat_", "popularity_trend", "user_category_stats")
    item_side = [c for c in holdout.column_names if c.startswith(prefixes) and c not in keys]
    order = pa.array(np.random.default_rng(0).permutation(holdout.num_rows))
    scrambled = holdout
    for c in item_side:
        scrambled = scrambled.set_column(scrambled.schema.get_field_index(c), c, holdout.column(c).take(order))
    assert not scrambled.column("item_ctr_24h").equals(holdout.column("item_ctr_24h"))
    after = offpolicy.score(*model, offpolicy.setup(train, scrambled, cfg, store)).logits
    assert np.array_equal(before, after)
