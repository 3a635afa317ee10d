"""The training-set builder: every label row survives, nothing from the label's moment or later leaks in,
TTLs hold, and on the same Parquet it returns what Feast's DuckDB offline store returns, value for value.

No services: Feast runs with its own registry and a SQLite online store (flywheel.feast_store.isolated_store)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.clients.feast_store import isolated_store
from flywheel.settings import LabelSettings
from training import synthetic, trainset
from training.labels import build_labels, connect

pytestmark = pytest.mark.slow  # compares against Feast: `make test-unit` skips it

START = datetime(2026, 1, 5, tzinfo=UTC)
CARD = {"user_id": 300, "item_id": 80, "item_category": 6}


@pytest.fixture(scope="module")
def feast(tmp_path_factory):
    work = tmp_path_factory.mktemp("trainset")
    store = isolated_store(work / "feast", work / "offline")
    return store, trainset.plan(store, "ranker_v1"), work / "offline"


def _write(offline, view: trainset.ViewJoin, rows: list[dict]) -> None:
    """Rows for one view in the feature job's layout (INT96 timestamps without a zone, like Flink)."""
    df = pd.DataFrame(rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True).dt.tz_localize(None)
    for (day, hour), part in df.groupby([df.event_timestamp.dt.strftime("%Y-%m-%d"), df.event_timestamp.dt.hour]):
        path = offline / view.name / f"dt={day}" / f"hr={hour:02d}" / f"part-{len(rows)}-{day}-{hour}"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(part, preserve_index=False)
        pq.write_table(table, path, use_deprecated_int96_timestamps=True)


def _nulls(view: trainset.ViewJoin) -> dict:
    return {n: None for n, _ in view.features if n != "user_impressions_1h"}


def _only(view: trainset.ViewJoin, root) -> trainset.Plan:
    """A plan of one view (all its features), read from another folder."""
    path = str(root / view.name / "dt=*" / "hr=*" / "part-*")
    return trainset.Plan("t", "1", [replace(view, path=path)], features=[n for n, _ in view.features])


def _labels(rows: list[dict]) -> pa.Table:
    df = pd.DataFrame(rows)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    for k in ("user_id", "item_id", "item_category"):
        if k not in df:
            df[k] = "nobody"
    return pa.Table.from_pandas(df, preserve_index=False)


def test_matches_feast_duckdb_offline_store_value_for_value(feast):
    _, _, offline = feast
    isolated = isolated_store(offline.parent / "feast-random", offline / "random")
    plan = trainset.plan(isolated, "ranker_v1")
    synthetic.write_features(plan, offline / "random", 40_000, START, 3, CARD, seed=1)
    labels = synthetic.labels(8_000, START, 3, CARD, seed=2)

    ours = trainset.point_in_time_join(plan, labels).to_pandas()

    # Feast's join is inclusive (feature time <= entity time): ask it one microsecond earlier to get
    # "strictly before" (all times here are whole milliseconds), with the request time left as it was.
    entity = labels.to_pandas()
    entity["request_time"] = entity["event_timestamp"]
    entity["event_timestamp"] = entity["event_timestamp"] - pd.Timedelta(microseconds=1)
    theirs = isolated.get_historical_features(entity, features=isolated.get_feature_service("ranker_v1")).to_df()

    assert len(ours) == len(theirs) == labels.num_rows
    assert list(ours.event_id) == labels.column("event_id").to_pylist()  # order kept
    theirs = theirs.set_index("event_id").loc[ours.event_id].reset_index()
    for name in plan.features:
        a, b = ours[name].astype("float64"), theirs[name].astype("float64")
        same = (a.isna() & b.isna()) | np.isclose(a, b, rtol=1e-12, atol=0)
        assert same.all(), f"{name}: {(~same).sum()} rows differ, e.g. {ours.loc[~same, name].head(3).tolist()}"
    # The data is dense enough to matter: most rows have features, some have none inside the TTL.
    present = 1 - ours["user_stats_24h__missing"].mean()
    assert 0.2 < present < 1.0


def test_no_leakage_rows_at_or_after_the_label_are_never_used(feast):
    store, plan, offline = feast
    view = next(v for v in plan.views if v.name == "user_stats_1h")
    t = [START + timedelta(hours=h, milliseconds=137) for h in range(1, 6)]
    rows = []
    for i, ti in enumerate(t):
        for dt, value in ((-1, 1), (0, 2), (1, 3), (-60_000, 4)):  # just before, at, just after, a minute before
            at = ti + timedelta(milliseconds=dt)
            rows.append({"user_id": f"u{i}", "user_impressions_1h": value, "event_timestamp": at} | _nulls(view))
    _write(offline / "adversarial", view, rows)
    p = _only(view, offline / "adversarial")
    out = trainset.point_in_time_join(
        p, _labels([{"user_id": f"u{i}", "event_timestamp": ti} for i, ti in enumerate(t)])
    )
    assert out.column("user_impressions_1h").to_pylist() == [1] * len(t)
    assert not any(out.column("user_stats_1h__missing").to_pylist())


def test_ttl_is_respected_and_missing_rows_are_kept_with_an_indicator(feast):
    store, plan, offline = feast
    view = next(v for v in plan.views if v.name == "user_stats_1h")
    ttl = view.ttl
    label_time = START + timedelta(days=1, milliseconds=5)
    rows = [
        {"user_id": "inside", "event_timestamp": label_time - ttl, "user_impressions_1h": 7},
        {
            "user_id": "expired",
            "event_timestamp": label_time - ttl - timedelta(milliseconds=1),
            "user_impressions_1h": 8,
        },
    ]
    rows = [r | _nulls(view) for r in rows]
    _write(offline / "ttl", view, rows)
    p = _only(view, offline / "ttl")
    users = ["inside", "expired", "never-seen", "inside"]  # the duplicate label row stays as it is
    labels = _labels([{"user_id": u, "event_timestamp": label_time, "event_id": str(i)} for i, u in enumerate(users)])
    out = trainset.point_in_time_join(p, labels)
    assert out.num_rows == 4
    assert out.column("event_id").to_pylist() == ["0", "1", "2", "3"]
    assert out.column("user_impressions_1h").to_pylist() == [7, None, None, 7]
    assert out.column("user_stats_1h__missing").to_pylist() == [False, True, True, False]


def test_a_view_without_any_data_yet_makes_every_row_missing_not_an_error(feast):
    store, plan, offline = feast
    view = next(v for v in plan.views if v.name == "item_stats_7d")
    p = _only(view, offline / "nothing")
    out = trainset.point_in_time_join(p, _labels([{"item_id": "i1", "event_timestamp": START}]))
    assert out.column("item_stats_7d__missing").to_pylist() == [True]


def test_labels_attribute_outcomes_inside_the_window_only():
    cfg = LabelSettings(
        attribution_window_s=600,
        match_on=["request_id", "user_id", "item_id"],
        targets={"label_click": "click", "label_purchase": "purchase"},
    )
    t0 = pd.Timestamp(START)
    ev = [
        # request r1: clicked after 1 s and bought after 5 min -> 1, 1
        ("a", "r1", "u1", "i1", "impression", t0),
        ("b", "r1", "u1", "i1", "click", t0 + pd.Timedelta(seconds=1)),
        ("c", "r1", "u1", "i1", "purchase", t0 + pd.Timedelta(minutes=5)),
        # r2: a click 11 minutes later (outside), and a click on another item of the same list -> 0, 0
        ("d", "r2", "u1", "i2", "impression", t0),
        ("e", "r2", "u1", "i2", "click", t0 + pd.Timedelta(minutes=11)),
        ("f", "r2", "u1", "i3", "click", t0 + pd.Timedelta(seconds=2)),
        # r3: the impression is outside [start, end) -> no row
        ("g", "r3", "u2", "i1", "impression", t0 + pd.Timedelta(days=2)),
    ]
    ev.append(ev[0])  # a row the log repeats is still one impression
    df = pd.DataFrame(ev, columns=["event_id", "request_id", "user_id", "item_id", "event_type", "event_timestamp"])
    df["item_category"], df["position"], df["propensity"] = "c1", 1, 0.5
    con = connect()
    con.register("log", df)
    out = build_labels("log", START, START + timedelta(days=1), cfg, con).to_pandas()
    assert out.event_id.tolist() == ["a", "d"]
    assert out.label_click.tolist() == [1, 0]
    assert out.label_purchase.tolist() == [1, 0]
    assert out[["position", "propensity", "request_id"]].notna().all().all()


def test_output_is_partitioned_by_day_with_a_reproducible_manifest(feast, tmp_path):
    store, plan, offline = feast
    labels = synthetic.labels(3_000, START, 2, CARD, seed=5)
    table = trainset.point_in_time_join(plan, labels)
    kwargs = dict(name="t", start=START, end=START + timedelta(days=2), label_columns=["label_click"],
                  labels_in=labels.num_rows, attribution_window_s=1800, event_log_reaches=None,
                  build_seconds=0.0)  # fmt: skip
    first = trainset.write_trainset(table, tmp_path / "a", plan, **kwargs)
    second = trainset.write_trainset(table, tmp_path / "b", plan, **kwargs)
    assert first.content_sha256 == second.content_sha256
    assert first.files == ["dt=2026-01-05/part-0.parquet", "dt=2026-01-06/part-0.parquet"]
    assert first.rows == first.label_rows_in == 3_000
    assert first.label_counts["label_click"] == pc_sum(labels, "label_click")
    assert set(first.missing_rates) >= set(plan.features) | set(plan.missing_columns)
    assert first.labels_final is False  # no event log coverage was given
    back = pq.read_table(tmp_path / "a" / "dt=2026-01-05" / "part-0.parquet")
    assert back.num_rows + pq.read_table(tmp_path / "a" / "dt=2026-01-06" / "part-0.parquet").num_rows == 3_000


def pc_sum(table: pa.Table, column: str) -> int:
    return int(np.asarray(table.column(column)).sum())
