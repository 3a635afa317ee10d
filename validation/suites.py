"""Great Expectations 1.x gates on a training set: quality (schema, nulls, ranges, label rate, row
count) and drift against a reference window (per feature: mean shift, KL divergence over reference
quantile bins, drop of the non-null share; per categorical column: KL divergence of the category shares),
with thresholds calibrated on the reference itself at a configured false-alarm rate (validation/drift.py).
Suites are built from the feature definitions, run in code, stored in a file context under var/gx, and
rendered as Data Docs HTML.

A failed critical check (every quality check; the drift kinds listed in `validation.drift.blocking`) blocks
training and promotion; the report names the failing column, the observed value and the bound.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flywheel.settings import Settings, ValidationSettings
from validation import drift

if TYPE_CHECKING:  # GE is imported lazily: it takes seconds
    from great_expectations.checkpoint.actions import ValidationAction
    from great_expectations.expectations.expectation import Expectation

log = logging.getLogger(__name__)
KEYS = ("event_id", "request_id", "user_id", "item_id", "position", "propensity", "event_timestamp")


@dataclass
class Check:
    suite: str  # quality | drift
    expectation: str
    column: str | None
    success: bool
    critical: bool
    observed: object
    expected: str


@dataclass
class Report:
    checks: list[Check]
    data_docs: str | None = None
    stats: dict = field(default_factory=dict)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    @property
    def critical_failures(self) -> list[Check]:
        return [c for c in self.failures if c.critical]

    @property
    def passed(self) -> bool:
        return not self.critical_failures

    def reasons(self) -> list[str]:
        return [
            f"{c.suite}: {c.expectation} on {c.column or 'table'} observed {_fmt(c.observed)}, expected {c.expected}"
            for c in self.critical_failures
        ]

    def summary(self) -> str:
        n = len(self.checks)
        lines = [
            f"validation: {n - len(self.failures)}/{n} checks passed, {len(self.critical_failures)} critical failed"
        ]
        lines += [f"  FAIL {r}" for r in self.reasons()]
        lines += [f"  warn {c.suite}: {c.expectation} on {c.column}" for c in self.failures if not c.critical]
        if self.data_docs:
            lines.append(f"  Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "data_docs": self.data_docs}


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def quality_expectations(
    df: pd.DataFrame, features: list[str], labels: list[str], v: ValidationSettings
) -> list[Expectation]:
    import great_expectations as gx

    E = gx.expectations
    out: list[Expectation] = [E.ExpectTableRowCountToBeBetween(min_value=v.min_rows, max_value=v.max_rows)]
    for c in (*KEYS, *labels, *features):
        out.append(E.ExpectColumnToExist(column=c))
    for c in (*KEYS, *labels):
        out.append(E.ExpectColumnValuesToNotBeNull(column=c))
    out.append(E.ExpectColumnValuesToBeBetween(column="propensity", min_value=0, max_value=1, strict_min=True))
    out.append(E.ExpectColumnValuesToBeBetween(column="position", min_value=1, max_value=v.max_position))
    out.append(E.ExpectColumnValuesToNotBeNull(column="item_category", mostly=round(1 - v.max_category_null_rate, 6)))
    for c in labels:
        out.append(E.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]))
    out.append(E.ExpectColumnMeanToBeBetween(column=labels[0], min_value=v.label_rate[0], max_value=v.label_rate[1]))
    for c in features:
        if v.max_null_rate < 1:
            out.append(E.ExpectColumnValuesToNotBeNull(column=c, mostly=round(1 - v.max_null_rate, 6)))
        out.append(E.ExpectColumnValuesToBeInTypeList(column=c, type_list=["float64", "int64", "Float64", "Int64",
                                                                           "float32", "int32"]))  # fmt: skip
        if any(k in c for k in ("impressions", "clicks", "purchases")) or c.startswith("seconds_"):
            out.append(E.ExpectColumnValuesToBeBetween(column=c, min_value=0))
        elif c.endswith(("_ctr_1h", "_ctr_24h", "_ctr_7d")) and "debiased" not in c:
            out.append(E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1))
        elif "ctr" in c or c == "popularity_trend":
            out.append(E.ExpectColumnValuesToBeBetween(column=c, min_value=0))
    return out


def drift_expectations(bounds: list[drift.Bound]) -> list[Expectation]:
    """The calibrated drift checks as Great Expectations expectations (so Data Docs show each bound)."""
    import great_expectations as gx

    E = gx.expectations
    out: list[Expectation] = []
    for b in bounds:
        t = round(b.threshold, 9)
        if b.kind == "mean" and b.reference is not None:
            out.append(E.ExpectColumnMeanToBeBetween(column=b.column, min_value=b.reference - t,
                                                     max_value=b.reference + t))  # fmt: skip
        elif b.kind == "present" and b.reference is not None and b.reference - t > 0:
            out.append(E.ExpectColumnValuesToNotBeNull(column=b.column, mostly=round(b.reference - t, 6)))
        elif b.kind == "kl":
            out.append(E.ExpectColumnKLDivergenceToBeLessThan(
                column=b.column, partition_object=b.partition, threshold=t,
                internal_weight_holdout=drift.TAIL_HOLDOUT, tail_weight_holdout=drift.TAIL_HOLDOUT))  # fmt: skip
        elif b.kind == "category":
            out.append(E.ExpectColumnKLDivergenceToBeLessThan(
                column=b.column, partition_object=b.partition, threshold=t, tail_weight_holdout=drift.TAIL_HOLDOUT
            ))  # fmt: skip
    return out


def _drift_kind(expectation: str, column: str | None, v: ValidationSettings) -> str:
    if expectation == "expect_column_mean_to_be_between":
        return "mean"
    if expectation == "expect_column_values_to_not_be_null":
        return "present"
    return "category" if column in v.drift.categorical else "kl"


def _describe(cfg: dict) -> str:
    keep = {k: w for k, w in cfg.items() if k not in ("column", "partition_object", "batch_id") and w is not None}
    return ", ".join(f"{k}={w}" for k, w in keep.items()) or "to hold"


def validate(
    df: pd.DataFrame,
    features: list[str],
    labels: list[str],
    cfg: Settings,
    reference: pd.DataFrame | None = None,
    name: str = "trainset",
    docs: bool = True,
) -> Report:
    """Run the quality suite (and the drift suite when a reference is given) through a GE checkpoint."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    v = cfg.validation
    cfg.var_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(cfg.var_dir))  # GE keeps its files in var/gx
    try:
        source = context.data_sources.get("trainsets")
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas("trainsets")
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)  # type: ignore[attr-defined]  # a pandas source (added above)
    try:
        batch_def = asset.get_batch_definition("whole")
    except KeyError:
        batch_def = asset.add_batch_definition_whole_dataframe("whole")

    suites = {"quality": quality_expectations(df, features, labels, v)}
    stats: dict = {"rows": len(df)}
    if reference is not None:
        cats = [c for c in v.drift.categorical if c in df and c in reference]
        bounds, stats["drift_calibration"] = drift.calibrate(reference, [c for c in features if c in reference], cats,
                                                             len(df), v.drift)  # fmt: skip
        suites["drift"] = drift_expectations(bounds)
    # Replaced, not add_or_update'd: that keeps expectation ids by comparing every new expectation with every
    # stored one, three times over (suite, definition, checkpoint), seconds per run; nothing reads those ids.
    _remove(context.checkpoints, f"{name}_checkpoint")
    defs = []
    for kind, expectations in suites.items():
        _remove(context.validation_definitions, f"{name}_{kind}")
        _remove(context.suites, f"{name}_{kind}")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_{kind}", expectations=expectations))
        defs.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_{kind}", data=batch_def, suite=suite)))  # fmt: skip
    actions: list[ValidationAction] = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if docs else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=defs, actions=actions)
    )
    result = checkpoint.run(batch_parameters={"dataframe": df})

    checks: list[Check] = []
    for run in result.run_results.values():
        kind = run.suite_name.rsplit("_", 1)[1]
        for r in run.results:
            cfg_ = r.expectation_config
            assert cfg_ is not None  # GE sets it on every result of a suite run
            observed = r.result.get("observed_value", r.result.get("unexpected_percent"))
            if isinstance(observed, float) and math.isinf(observed):
                observed = "inf"
            critical = kind == "quality" or _drift_kind(cfg_.type, cfg_.kwargs.get("column"), v) in v.drift.blocking
            checks.append(Check(kind, cfg_.type, cfg_.kwargs.get("column"), bool(r.success), critical,
                                observed, _describe(dict(cfg_.kwargs))))  # fmt: skip
    index = data_docs_path(cfg)
    return Report(checks, str(index) if docs and index.exists() else None, stats)


def _remove(factory: Any, name: str) -> None:
    """Delete a GE object by name if it exists."""
    from great_expectations.exceptions import DataContextError

    try:
        factory.delete(name)
    except DataContextError:
        pass


def data_docs_path(cfg: Settings) -> Path:
    return cfg.var_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
