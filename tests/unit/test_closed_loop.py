"""The closed-loop world across weeks: the same world each week (flywheel.loop runs it week by week), other
traffic each week, reproducible from the seed; ids prefixed for worlds that share an online store."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import orjson
import pyarrow.parquet as pq

from flywheel.events import closed_loop
from flywheel.events.simulator import SimConfig, World, simulate

WORLD = SimConfig(seed=3, users=50, items=40, categories=4, positions=5, events=2_000, new_items_per_day=0.0)
LOOP = closed_loop.LoopConfig(requests=60, candidates=10, k=5)


def _week(n: int) -> SimConfig:
    return WORLD.model_copy(update={"start": WORLD.start + timedelta(days=7 * n)})


def _requests(cfg: SimConfig) -> list[tuple[int, int, list[int]]]:
    world = World(cfg, np.random.default_rng(cfg.seed))
    return [(r["user"], r["at"], r["candidates"].tolist()) for r in closed_loop.requests_of(cfg, LOOP, world)]


def test_a_fixed_catalog_world_is_the_same_world_every_week():
    a, b = World(_week(0), np.random.default_rng(3)), World(_week(5), np.random.default_rng(3))
    assert np.array_equal(a.user_latent, b.user_latent) and np.array_equal(a.item_latent, b.item_latent)
    assert np.array_equal(a.item_cat, b.item_cat) and a.n_items == b.n_items == 40


def test_each_week_has_its_own_traffic_and_a_week_replays_identically():
    first, again, second = _requests(_week(0)), _requests(_week(0)), _requests(_week(1))
    assert first == again
    week_ms = 7 * 86_400_000
    assert [t - week_ms for _, t, _ in second] != [t for _, t, _ in first]  # not the same minutes shifted
    assert [c for *_, c in second] != [c for *_, c in first]
    start = int(_week(1).start.timestamp() * 1000)
    assert all(start <= t < start + week_ms for _, t, _ in second)


def test_ids_carry_the_prefix_in_simulated_logs_and_in_the_catalog(tmp_path):
    cfg = WORLD.model_copy(update={"id_prefix": "w1-"})
    events = [orjson.loads(v) for v in simulate(cfg).values[:200]]
    assert all(e["user_id"].startswith("w1-u") and e["item_id"].startswith("w1-i") for e in events)
    assert all(e["item_category"].startswith("cat") for e in events)  # categories are shared vocabulary
    path = tmp_path / "catalog" / "world.parquet"
    closed_loop.write_world_catalog(cfg, path)
    assert pq.read_table(path)["item_id"].to_pylist() == [f"w1-i{j}" for j in range(40)]


def test_the_catalog_is_rewritten_only_when_it_changes(tmp_path):
    path = tmp_path / "world.parquet"
    written = closed_loop.write_world_catalog(_week(0), path)
    assert closed_loop.write_world_catalog(_week(3), path) == written  # same items: the service need not re-read
    closed_loop.write_world_catalog(_week(0).model_copy(update={"items": 41}), path)
    assert pq.read_table(path).num_rows == 41
