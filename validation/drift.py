"""Drift checks calibrated on the reference window itself.

For every feature, three statistics against the reference (the champion's training set): the shift of
its mean, the KL divergence of its distribution over reference-quantile bins (as Great Expectations
computes it), and the drop of its share of non-null values (sparse features included); for every
categorical column, the KL divergence of its category shares. How large each statistic gets by chance
is measured on the reference: its time blocks (`drift.block_hours`) are split into random halves many
times and each statistic is computed between the halves, then rescaled to the sizes actually compared
(KL-like statistics with 1/n, differences with 1/sqrt(n)). One threshold multiplier for all checks, the
(1 - false_alarm_rate) quantile of the largest standardised null statistic per split (the max-T rule),
keeps the chance that *any* check fires on a stationary week at the configured rate. The thresholds
become ordinary Great Expectations expectations, so Data Docs show every check with its bound.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flywheel.settings import DriftSettings

log = logging.getLogger(__name__)
TAIL_HOLDOUT = 0.01  # the KL expectations' tail_weight_holdout (and internal_weight_holdout, numeric)


@dataclass
class Bound:
    """One calibrated check: what GE will evaluate, with its threshold."""

    kind: str  # mean | kl | present | category
    column: str
    threshold: float  # mean: largest |shift|; kl, category: largest KL; present: largest drop in non-null share
    reference: float | None = None  # mean: the reference mean; present: the reference non-null share
    partition: dict | None = None  # kl, category: GE's partition object from the reference


def partition(x: np.ndarray, bins: int) -> dict | None:
    """Reference-quantile bins (GE's continuous partition object); None if there are no values."""
    if len(x) == 0:
        return None
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    counts, _ = np.histogram(x, bins=edges)
    return {"bins": edges.tolist(), "weights": (counts / counts.sum()).tolist()}


def _cells(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's cell: 0 below the partition, 1.. its bin (half-open, the last one closed, as numpy's
    histogram and GE count), len(edges) above."""
    cell = np.searchsorted(edges, x, side="right")
    return np.where(x == edges[-1], len(edges) - 1, cell)


def _bin_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """[below, histogram, above] counts of the non-null values."""
    return np.bincount(_cells(x, edges), minlength=len(edges) + 1)


def _entropy(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q) (both normalised; inf where q = 0 < p), without its per-call overhead."""
    p, q = p / p.sum(), q / q.sum()
    if np.any((q == 0) & (p > 0)):
        return float("inf")
    on = p > 0
    return float(np.sum(p[on] * np.log(p[on] / q[on])))


def kl_numeric(observed: np.ndarray, weights: np.ndarray) -> float:
    """GE 1.x's KL for a finite continuous partition with tail and internal weight holdouts, from the
    observed [below, bins..., above] counts."""
    expected = np.asarray(weights, dtype=float) * (1 - 2 * TAIL_HOLDOUT)
    zeros = expected == 0
    if zeros.any():
        expected[zeros] = TAIL_HOLDOUT / zeros.sum()
    expected = np.concatenate([[TAIL_HOLDOUT / 2], expected, [TAIL_HOLDOUT / 2]])
    total = observed.sum()
    return _entropy(observed, expected) if total else 0.0


def kl_categorical(obs: np.ndarray, ref: np.ndarray) -> float:
    """GE 1.x's KL for a categorical partition, from category counts aligned with the reference's counts:
    categories the reference never had share the tail holdout."""
    seen, unseen = ref > 0, (ref == 0) & (obs > 0)
    q = ref[seen] / ref[seen].sum()
    o = np.concatenate([obs[seen], obs[unseen]]).astype(float)
    if unseen.any():
        q = np.concatenate([q * (1 - TAIL_HOLDOUT), np.full(unseen.sum(), TAIL_HOLDOUT / unseen.sum())])
    return _entropy(o, q) if o.sum() else 0.0


@dataclass
class _Column:
    """Per time block: the sufficient statistics of one column, so a split is a sum over blocks."""

    kind: str
    name: str
    count: np.ndarray  # (blocks,) non-null values
    rows: np.ndarray  # (blocks,) all rows
    total: np.ndarray | None = None  # (blocks,) sum of values (numeric)
    squares: np.ndarray | None = None  # (blocks,) sum of squared values (numeric)
    bins: np.ndarray | None = None  # (blocks, cells) bin or category counts
    edges: np.ndarray | None = None
    values: list | None = None  # categories


def _columns(reference: pd.DataFrame, block: np.ndarray, blocks: int, features: list[str],
             categorical: list[str], v: DriftSettings) -> list[_Column]:  # fmt: skip
    rows = np.bincount(block, minlength=blocks).astype(float)
    out = []
    for c in features:
        x = pd.to_numeric(reference[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        ok = np.isfinite(x)
        count = np.bincount(block[ok], minlength=blocks).astype(float)
        total = np.bincount(block[ok], weights=x[ok], minlength=blocks)
        squares = np.bincount(block[ok], weights=x[ok] ** 2, minlength=blocks)
        part = partition(x[ok], v.bins)
        col = _Column("numeric", c, count, rows, total, squares)
        if part is not None:
            col.edges = np.asarray(part["bins"])
            cells = len(col.edges) + 1  # below, the bins, above
            cell = _cells(x[ok], col.edges)
            col.bins = np.bincount(block[ok] * cells + cell, minlength=blocks * cells).reshape(blocks, cells)
        out.append(col)
    for c in categorical:
        s = reference[c]
        ok = s.notna().to_numpy()
        codes, values = pd.factorize(s[ok])  # native values: GE matches the column's own values against them
        bins = np.zeros((blocks, len(values)))
        np.add.at(bins, (block[ok], codes), 1.0)
        native = [v.item() if isinstance(v, np.generic) else v for v in values]
        out.append(_Column("category", c, bins.sum(axis=1), rows, bins=bins, values=native))
    return out


def _statistics(col: _Column, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Each statistic between two groups of blocks (0/1 masks), as the observed check computes it."""
    out: dict[str, float] = {}
    na, nb = col.count[a].sum(), col.count[b].sum()
    ra, rb = col.rows[a].sum(), col.rows[b].sum()
    out["present"] = max(0.0, nb / rb - na / ra) if ra and rb else 0.0
    if col.kind == "numeric":
        if col.total is not None:  # undefined (NaN) for a split that leaves a half without a value
            out["mean"] = abs(col.total[a].sum() / na - col.total[b].sum() / nb) if na and nb else np.nan
        if col.bins is not None:
            ref = col.bins[b].sum(axis=0)[1:-1]
            out["kl"] = kl_numeric(col.bins[a].sum(axis=0), ref / ref.sum()) if ref.sum() else 0.0
    elif col.bins is not None:
        out["category"] = kl_categorical(col.bins[a].sum(axis=0), col.bins[b].sum(axis=0))
    return out


def _independent_rows_scale(col: _Column, kind: str) -> float:
    """The expected half-vs-half statistic if rows were independent (equal halves)."""
    n, rows = col.count.sum(), col.rows.sum()
    if kind == "present":
        p = n / rows if rows else 0.0
        return float(np.sqrt(p * (1 - p) * 4 / rows) / np.sqrt(2 * np.pi)) if rows else 0.0
    if n < 2:
        return 0.0
    if kind == "mean" and col.total is not None and col.squares is not None:
        var = max(col.squares.sum() / n - (col.total.sum() / n) ** 2, 0.0)
        return float(np.sqrt(2 / np.pi) * np.sqrt(var * 4 / n))
    cells = int((col.bins.sum(axis=0) > 0).sum()) if col.bins is not None else 1
    return (cells - 1) / 2 * 4 / n  # KL between two samples of n/2: about chi-square / (2 n) per half


def calibrate(
    reference: pd.DataFrame,
    features: list[str],
    categorical: list[str],
    n_current: int,
    v: DriftSettings,
    seed: int = 0,
) -> tuple[list[Bound], dict]:
    """The drift checks' thresholds for a current window of n_current rows against this reference."""
    ts = pd.to_datetime(reference["event_timestamp"], utc=True)
    span = (ts - ts.min()).dt.total_seconds().to_numpy() // (v.block_hours * 3600)
    blocks_used, block = np.unique(span.astype(np.int64), return_inverse=True)
    n_blocks = len(blocks_used)
    cols = _columns(reference, block, n_blocks, features, [c for c in categorical if c in reference], v)
    n_ref = len(reference)
    rng = np.random.default_rng(seed)
    null: dict[tuple[str, str], list[float]] = {}
    sizes = []
    for _ in range(v.resamples if n_blocks >= 2 else 0):
        a = rng.random(n_blocks) < 0.5
        if a.all() or not a.any():
            a[rng.integers(n_blocks)] = not a[0]
        sizes.append(cols[0].rows[a].sum() if cols else 0)
        for col in cols:
            for kind, value in _statistics(col, a, ~a).items():
                null.setdefault((kind, col.name), []).append(value)
    if not null:
        raise ValueError(
            f"the reference spans {n_blocks} time block(s) of {v.block_hours} h: at least 2 are needed to calibrate "
            "drift checks (lower validation.drift.block_hours, or use a longer reference window)"
        )
    half_a = np.asarray(sizes, dtype=float)
    # Rescale the half-vs-half null to current-vs-reference sizes: variance ~ 1/n_a + 1/n_b.
    var_null = np.mean(1 / half_a + 1 / (n_ref - half_a))
    var_obs = 1 / max(n_current, 1) + 1 / n_ref
    scale = {"kl": var_obs / var_null, "category": var_obs / var_null, "mean": np.sqrt(var_obs / var_null),
             "present": np.sqrt(var_obs / var_null)}  # fmt: skip
    keys = list(null)
    samples = np.array([null[k] for k in keys])  # (checks, resamples)
    # Each check's null scale: its mean over the splits, but never below what independent rows would give
    # (a scale estimated from a few dozen blocks is noisy, and an underestimated one fires too often).
    by_name = {c.name: c for c in cols}
    floor = np.array([_independent_rows_scale(by_name[name], kind) for kind, name in keys])
    defined = ~np.isnan(samples)
    mean = np.nansum(samples, axis=1) / np.maximum(defined.sum(axis=1), 1)
    norm = np.maximum(np.maximum(mean, floor), 1e-12)
    tau = float(np.quantile(np.nanmax(samples / norm[:, None], axis=0), 1 - v.false_alarm_rate))
    bounds = []
    for (kind, name), c_j in zip(keys, norm, strict=True):
        col = by_name[name]
        threshold = max(float(tau * c_j * scale[kind]), 1e-9)  # a statistic that never moved: any real change
        present = float(col.count.sum() / col.rows.sum()) if col.rows.sum() else 0.0
        if kind == "mean" and col.total is not None:
            bounds.append(Bound("mean", name, threshold, reference=float(col.total.sum() / col.count.sum())))
        elif kind == "present":
            bounds.append(Bound("present", name, threshold, reference=present))
        elif kind == "kl" and col.edges is not None and col.bins is not None:
            w = col.bins.sum(axis=0)[1:-1]
            bins = {"bins": col.edges.tolist(), "weights": (w / w.sum()).tolist()}
            bounds.append(Bound("kl", name, threshold, partition=bins))
        elif kind == "category" and col.bins is not None:
            w = col.bins.sum(axis=0)
            shares = {"values": col.values, "weights": (w / w.sum()).tolist()}
            bounds.append(Bound("category", name, threshold, partition=shares))
    info = {"blocks": n_blocks, "resamples": len(half_a), "tau": tau, "false_alarm_rate": v.false_alarm_rate}
    return bounds, info


def observed(current: pd.DataFrame, b: Bound) -> float:
    """The statistic GE will report for this check on the current window (for the harness and tests)."""
    s = current[b.column]
    if b.kind == "present":
        return max(0.0, (b.reference or 0.0) - float(s.notna().mean()))
    if b.kind == "category":
        assert b.partition is not None
        counts = s.dropna().value_counts()
        values = list(b.partition["values"]) + [x for x in counts.index if x not in b.partition["values"]]
        obs = np.array([counts.get(x, 0) for x in values], dtype=float)
        ref = np.concatenate([b.partition["weights"], np.zeros(len(values) - len(b.partition["values"]))])
        return kl_categorical(obs, ref)
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    x = x[np.isfinite(x)]
    if b.kind == "mean":
        return abs(float(x.mean()) - (b.reference or 0.0)) if len(x) else 0.0
    assert b.partition is not None
    return kl_numeric(_bin_counts(x, np.asarray(b.partition["bins"])), np.asarray(b.partition["weights"]))


def fires(current: pd.DataFrame, bounds: list[Bound]) -> list[Bound]:
    return [b for b in bounds if observed(current, b) > b.threshold]
