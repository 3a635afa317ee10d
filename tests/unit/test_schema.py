from __future__ import annotations

import orjson
import pytest

from flywheel.events.schema import SCHEMA_VERSION, extras, parse, schema, validate
from flywheel.events.simulator import MALFORMED_KINDS, _malform
from tests.events import T0, make_event


def test_valid_event_passes():
    assert validate(make_event(1)) is None
    event, rejection = parse(orjson.dumps(make_event(2, item_category=None, event_type="purchase")))
    assert rejection is None and event["event_id"] == "e2"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"event_id": ""}, "event_id", "should be non-empty"),
        ({"event_type": "hover"}, "event_type", "is not one of"),
        ({"position": 0}, "position", "less than the minimum of 1"),
        ({"position": "3"}, "position", "is not of type 'integer'"),
        ({"propensity": 0}, "propensity", "less than or equal to the minimum of 0"),
        ({"propensity": 1.2}, "propensity", "greater than the maximum of 1"),
        ({"propensity": None}, "propensity", "is not of type 'number'"),
        ({"event_time": "2026-01-05T00:00:00"}, "event_time", "is not of type 'integer'"),
        ({"event_time": 1_000}, "event_time", "less than the minimum"),
        ({"schema_version": 0}, "schema_version", "less than the minimum of 1"),
        ({"schema_version": "2"}, "schema_version", "is not of type 'integer'"),
        ({"session_id": 5}, "session_id", "is not of type"),
        ({"context": {"nested": {"a": 1}}}, "context.nested", "is not of type"),
    ],
)
def test_each_kind_of_bad_event_is_rejected_with_a_reason(change, field, words):
    rejection = validate(make_event(1) | change)
    assert rejection is not None
    assert rejection.field == field
    assert words in rejection.reason


@pytest.mark.parametrize("missing", ["event_id", "user_id", "item_id", "propensity", "event_time", "request_id"])
def test_missing_required_field_is_named(missing):
    ev = make_event(1)
    ev.pop(missing)
    rejection = validate(ev)
    assert rejection is not None and rejection.field == missing and "required" in rejection.reason


def test_undecodable_records_are_rejected():
    assert parse(b'{"event_id": "x", ')[1].field == "<record>"
    assert "expected a JSON object" in parse(b"[1, 2]")[1].reason


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_simulated_malformation_breaks_the_contract(kind):
    _, rejection = parse(_malform(kind, make_event(5)))
    assert rejection is not None, kind


def test_event_from_the_future_is_rejected():
    rejection = validate(make_event(1, event_time=T0 + 2 * 86_400_000, ingest_time=T0))
    assert rejection is not None and rejection.field == "event_time" and "after ingest_time" in rejection.reason


def test_every_version_is_read_by_the_newest_contract_and_unknown_fields_are_carried():
    """The compatibility rule: v1 events are valid v2 events, and a newer producer's additional fields are
    accepted and carried as extras, not a reason to dead-letter its traffic."""
    v1 = make_event(1)
    v2 = make_event(2, schema_version=2, session_id="s-1")
    v3 = make_event(3, schema_version=3, session_id=None, app_build=7010, screen={"w": 390, "dark": True})
    for ev in (v1, v2, v3):
        event, rejection = parse(orjson.dumps(ev))
        assert rejection is None and event == ev
    assert extras(v1) == extras(v2) == {}
    assert extras(v3) == {"app_build": 7010, "screen": {"w": 390, "dark": True}}
    # A removed or retyped required field still breaks the contract, whatever the version.
    assert validate({k: v for k, v in v3.items() if k != "user_id"}).field == "user_id"
    assert validate(v3 | {"position": "first"}).field == "position"


def test_the_newest_contract_only_adds_optional_fields_to_the_older_ones():
    """What makes the rule hold: each older schema's required fields and their types are unchanged."""
    import json

    from flywheel.events.schema import SCHEMA_PATH

    newest = schema()
    for version in range(1, SCHEMA_VERSION):
        old = json.loads((SCHEMA_PATH.parent / f"interaction_event.v{version}.json").read_text())
        assert set(old["required"]) == set(newest["required"]), version
        for name, spec in old["properties"].items():
            if name != "schema_version":
                assert newest["properties"][name] == spec, (version, name)
