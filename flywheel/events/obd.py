"""The Open Bandit Dataset sample (real ZOZOTOWN logs) as Flywheel events, and its replay into Kafka.

The sample ships inside the `obp` source distribution on PyPI; `fetch` downloads it once (sha256
checked) into build/data/obd/<policy>/<campaign>/.

Mapping (documented in the README):
- one `impression` per CSV row, plus one `click` when click=1 (1 ms after its impression: the log has
  no click time, and a click must not precede what it clicked);
- the sample has no user id: `user_id` is a stable key derived from the four hashed user features
  ("obd-u-" + first 16 hex of sha1 of them joined with "|"), so the same feature tuple is one user;
- `item_id` is "obd-<campaign>-<item_id>" (item ids are per campaign), `item_category` comes from the
  item's `item_feature_1` (12 values in the `all` campaign);
- each row is its own ranked slot: `request_id` is "obd-<policy>-<campaign>-<row>";
- `propensity` is the logged `propensity_score`, `position` the logged 1-based position.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flywheel.errors import FlywheelError
from flywheel.settings import ObdSettings

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = [f"user_feature_{i}" for i in range(4)]


def obd_dir(build_dir: Path) -> Path:
    return build_dir / "data" / "obd"


def _sdist_url(version: str) -> str:
    req = urllib.request.Request(
        "https://pypi.org/simple/obp/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    name = f"obp-{version}.tar.gz"
    for f in files:
        if f["filename"] == name:
            return f["url"]
    raise FlywheelError(f"{name} is not on PyPI's simple index; check obd.version in flywheel.yaml")


def fetch(cfg: ObdSettings, build_dir: Path) -> Path:
    """Download and unpack the sample once; a second call only checks it is there."""
    target = obd_dir(build_dir)
    if (target / ".complete").exists():
        return target
    url = _sdist_url(cfg.version)
    with urllib.request.urlopen(url, timeout=300) as r:
        blob = r.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != cfg.sha256:
        raise FlywheelError(
            f"obp-{cfg.version}.tar.gz sha256 {digest} != expected {cfg.sha256} (flywheel.yaml obd.sha256)"
        )
    prefix = f"obp-{cfg.version}/obp/dataset/obd/"
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".csv"):
                out = target / member.name[len(prefix) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                data = tar.extractfile(member)
                assert data is not None  # a regular file (checked above) always has content
                out.write_bytes(data.read())
    (target / ".complete").write_text(f"obp-{cfg.version} {digest}\n")
    return target


def csv_path(root: Path, policy: str, campaign: str) -> Path:
    if policy not in POLICIES or campaign not in CAMPAIGNS:
        raise FlywheelError(f"unknown OBD slice {policy}/{campaign}: policies {POLICIES}, campaigns {CAMPAIGNS}")
    path = root / policy / campaign / f"{campaign}.csv"
    if not path.exists():
        raise FlywheelError(f"{path} missing: run `make setup` (downloads the Open Bandit sample)")
    return path


def user_key(features: list[str]) -> str:
    return "obd-u-" + hashlib.sha1("|".join(features).encode()).hexdigest()[:16]


def load_slice(root: Path, policy: str, campaign: str) -> pd.DataFrame:
    """The logged rows joined with item categories, one row per impression."""
    path = csv_path(root, policy, campaign)
    df = pd.read_csv(path, index_col=0, usecols=lambda c: not c.startswith("user-item_affinity"))
    items = pd.read_csv(path.parent / "item_context.csv", index_col=0)[["item_id", "item_feature_1"]]
    df = df.merge(items, on="item_id", how="left", validate="many_to_one")
    df["event_time"] = (pd.to_datetime(df["timestamp"], utc=True).astype("int64") // 1_000_000).astype("int64")
    df["policy"], df["campaign"] = policy, campaign
    df["row"] = range(len(df))
    return df


def to_events(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Contract events (without ingest_time, set at send time), in event-time order."""
    events: list[dict[str, Any]] = []
    for r in df.itertuples(index=False):
        feats = [getattr(r, f) for f in USER_FEATURES]
        base = {
            "schema_version": 1,
            "user_id": user_key(feats),
            "item_id": f"obd-{r.campaign}-{r.item_id}",
            "item_category": f"c{r.item_feature_1[:12]}",
            "position": int(r.position),
            "propensity": float(r.propensity_score),
            "request_id": f"obd-{r.policy}-{r.campaign}-{r.row}",
            "source": "obd",
            "context": {"policy": r.policy, "campaign": r.campaign, **dict(zip(USER_FEATURES, feats, strict=True))},
        }
        events.append(
            {
                **base,
                "event_id": f"{base['request_id']}-imp",
                "event_type": "impression",
                "event_time": int(r.event_time),
            }
        )
        if r.click == 1:
            events.append(
                {
                    **base,
                    "event_id": f"{base['request_id']}-click",
                    "event_type": "click",
                    "event_time": int(r.event_time) + 1,
                }
            )
    events.sort(key=lambda e: e["event_time"])
    return events


@dataclass
class SliceCounts:
    policy: str
    campaign: str
    rows: int
    clicks: int
    events: int


def build(root: Path, slices: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[SliceCounts]]:
    """All selected slices merged in event-time order, with per-slice counts."""
    events: list[dict[str, Any]] = []
    counts = []
    for policy, campaign in slices:
        df = load_slice(root, policy, campaign)
        evs = to_events(df)
        counts.append(SliceCounts(policy, campaign, len(df), int(df["click"].sum()), len(evs)))
        events.extend(evs)
    events.sort(key=lambda e: e["event_time"])
    return events, counts


def paced(
    events: list[dict[str, Any]],
    speedup: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Yield events so that event time advances `speedup` times faster than wall time (0 = no pacing),
    stamping ingest_time at the moment each one is released."""
    if not events:
        return
    t0_event = events[0]["event_time"] / 1000.0
    t0_wall = clock()
    for e in events:
        if speedup > 0:
            due = t0_wall + (e["event_time"] / 1000.0 - t0_event) / speedup
            ahead = due - clock()
            if ahead > 0.001:
                sleep(ahead)
        yield {**e, "ingest_time": int(clock() * 1000)}
