"""The event contract as Flink SQL: a `reject_reason` expression generated from the JSON Schema, so the
job checks events in the JVM with the same rules (and wording) as flywheel.events.schema.

Differences from the Python validator, by design (values are read as text, like JSON_VALUE): a number
sent as a numeric string ("3") is accepted where the schema wants a number, and the values inside
`context` are not type-checked. Every other rule matches.
"""

from __future__ import annotations

from flywheel.events.schema import MAX_FUTURE_MS, schema

SQL_TYPES = {"integer": "BIGINT", "number": "DOUBLE", "string": "STRING"}


def base_type(spec: dict) -> str | None:
    """A field's JSON type with `null` left out ("integer" for ["integer", "null"]); None for a field
    with no type of SQL_TYPES (an enum or const, checked by value)."""
    types = spec.get("type")
    return next((t for t in (types if isinstance(types, list) else [types]) if t in SQL_TYPES), None)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# Scalars inside `context` the event log keeps as columns: j_context__<name>.
CONTEXT_COLUMNS = ("policy", "team")


def fields_sql(payload: str = "payload") -> str:
    """The call that parses a record once into the columns the contract reads (flink_jobs/jvm JsonFields):
    is_object, extras (the fields outside the contract as a JSON object, or NULL: carried, never a reason to
    reject), and has_<field> and j_<field> (the value as text) for each contract field, and for each of
    CONTEXT_COLUMNS j_context__<name>. Use it as `FROM t, LATERAL TABLE(<this>) AS p`."""
    names = [*schema()["properties"], *(f"context.{c}" for c in CONTEXT_COLUMNS)]
    return f"JSON_FIELDS({payload}, {_lit(','.join(names))})"


def reject_reason_sql() -> str:
    """A CASE expression: NULL for a valid event, else '<field>: <reason>' for the first problem.

    It reads the columns of `fields_sql` (the record parsed once, not once per rule with JSON_VALUE)."""
    s = schema()
    props: dict = s["properties"]

    def present(field: str) -> str:
        return f"has_{field}"

    rules: list[tuple[str, str]] = [("NOT is_object", "<record>: not a JSON object")]
    for field in s["required"]:
        rules.append((f"NOT {present(field)}", f"{field}: required"))
    # Fields outside the contract are a newer producer's additions: carried (`extras`), not checked.
    for field, spec in props.items():
        value = f"j_{field}"
        exists = present(field)
        types = spec.get("type")
        nullable = isinstance(types, list) and "null" in types
        base = base_type(spec)
        if "const" in spec:
            rules.append(
                (
                    f"{exists} AND ({value} IS NULL OR {value} <> {_lit(str(spec['const']))})",
                    f"{field}: {spec['const']} was expected",
                )
            )
        if "enum" in spec:
            allowed = ", ".join(_lit(v) for v in spec["enum"])
            rules.append(
                (
                    f"{exists} AND ({value} IS NULL OR {value} NOT IN ({allowed}))",
                    f"{field}: is not one of {spec['enum']}",
                )
            )
        if base in ("integer", "number"):
            typed = f"TRY_CAST({value} AS {SQL_TYPES[base]})"
            rules.append((f"{exists} AND {typed} IS NULL", f"{field}: is not of type '{base}'"))
            for kw, op, words in (
                ("minimum", "<", "less than the minimum of"),
                ("exclusiveMinimum", "<=", "less than or equal to the minimum of"),
                ("maximum", ">", "greater than the maximum of"),
            ):
                if kw in spec:
                    rules.append((f"TRY_CAST({value} AS DOUBLE) {op} {spec[kw]}", f"{field}: {words} {spec[kw]}"))
        if base == "string" and not nullable:
            rules.append((f"{exists} AND {value} IS NULL", f"{field}: is not of type 'string'"))
        if base == "string" and "minLength" in spec:
            rules.append((f"{exists} AND CHAR_LENGTH({value}) < {spec['minLength']}", f"{field}: should be non-empty"))
        if base == "string" and "maxLength" in spec:
            rules.append((f"CHAR_LENGTH({value}) > {spec['maxLength']}", f"{field}: is too long"))
    rules.append(
        (
            f"TRY_CAST(j_event_time AS BIGINT) > TRY_CAST(j_ingest_time AS BIGINT) + {MAX_FUTURE_MS}",
            "event_time: more than a day after ingest_time (a broken clock?)",
        )
    )
    cases = "\n    ".join(f"WHEN {cond} THEN {_lit(reason)}" for cond, reason in rules)
    return f"CASE\n    {cases}\n    ELSE CAST(NULL AS STRING)\n  END"
