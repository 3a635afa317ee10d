"""The versioned event contract (schemas/interaction_event.v<N>.json, the newest applies) and its validator.

Compatibility rule: a version only adds optional fields, and required fields keep their names and types.
So an event of any version is checked against the newest contract, and fields it does not know (a newer
producer's additions) are accepted and carried (`extras`), never a reason to reject: the first producer
to add a field must not send its traffic to the dead-letter topic. A removed or retyped required field is
rejected. Validation returns a reason a human can act on ("propensity: 0 is not > 0"), because that
reason travels with a rejected event to the dead-letter topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator, ValidationError

SCHEMA_VERSION = 2  # the newest contract; v2 added the optional session_id
SCHEMA_PATH = Path(__file__).parent / "schemas" / f"interaction_event.v{SCHEMA_VERSION}.json"
EVENT_TYPES = ("impression", "click", "add_to_cart", "purchase")
# An event stamped far after it was ingested has a broken clock; accepted, it would drag the stream's
# watermark ahead and make every later event "late".
MAX_FUTURE_MS = 86_400_000


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validator() -> Draft202012Validator:
    s = schema()
    Draft202012Validator.check_schema(s)
    return Draft202012Validator(s)


@dataclass(frozen=True)
class Rejection:
    """Why an event is not valid: the field at fault and a sentence naming the problem."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def validate(event: Any) -> Rejection | None:
    """None if the event satisfies the contract, else the first problem found (stable order)."""
    errors = sorted(_validator().iter_errors(event), key=lambda e: (list(e.path), e.validator))
    if not errors:
        if event["event_time"] > event["ingest_time"] + MAX_FUTURE_MS:
            return Rejection("event_time", "more than a day after ingest_time (a broken clock?)")
        return None
    err = errors[0]
    field = ".".join(str(p) for p in err.path) or _missing_field(err) or "<event>"
    return Rejection(field, err.message)


def _missing_field(err: ValidationError) -> str | None:
    if err.validator == "required":
        return err.message.split("'")[1] if "'" in err.message else None
    return None


def extras(event: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields of an event outside the newest contract: carried, not checked."""
    known = schema()["properties"]
    return {k: v for k, v in event.items() if k not in known}


def parse(raw: bytes | str) -> tuple[dict[str, Any] | None, Rejection | None]:
    """Decode and validate one Kafka record value."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, Rejection("<record>", f"not valid JSON ({exc})")
    if not isinstance(event, dict):
        return None, Rejection("<record>", f"expected a JSON object, got {type(event).__name__}")
    rejection = validate(event)
    return (None, rejection) if rejection else (event, None)
