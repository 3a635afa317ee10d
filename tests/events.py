"""Valid contract events for tests."""

from __future__ import annotations

from typing import Any

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def make_event(i: int, user: str = "u1", **overrides: Any) -> dict[str, Any]:
    ev = {
        "schema_version": 1,
        "event_id": f"e{i}",
        "user_id": user,
        "item_id": f"i{i % 50}",
        "item_category": f"cat{i % 5}",
        "event_type": "impression",
        "position": 1 + i % 10,
        "propensity": 0.1,
        "request_id": f"r{i // 10}",
        "source": "test",
        "context": {"hour": 3},
        "event_time": T0 + i * 1000,
        "ingest_time": T0 + i * 1000 + 50,
    }
    ev.update(overrides)
    return ev
