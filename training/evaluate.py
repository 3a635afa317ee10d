"""Offline metrics: classification (AUC, log-loss, calibration), ranking per request (NDCG@k, Recall@k)
and feedback-loop health (how concentrated exposure is)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve from ranks (ties averaged); 0.5 when only one class is present."""
    y = np.asarray(y, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return 0.5
    ranks = pd.Series(p).rank(method="average").to_numpy()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if len(y) else float("nan")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Mean |predicted - observed| click rate over equal-width probability bins, weighted by bin size."""
    if len(y) == 0:
        return float("nan")
    edges = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(edges):
        m = edges == b
        total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(y))


def ranking_metrics(request: np.ndarray, y: np.ndarray, p: np.ndarray, k: int = 5) -> dict[str, float]:
    """NDCG@k and Recall@k averaged over requests that have at least one click."""
    df = pd.DataFrame({"r": request, "y": y, "p": p})
    df = df[df.groupby("r")["y"].transform("sum") > 0]
    if df.empty:
        return {f"ndcg@{k}": float("nan"), f"recall@{k}": float("nan")}
    df = df.sort_values(["r", "p"], ascending=[True, False])
    df["rank"] = df.groupby("r").cumcount() + 1
    df["gain"] = np.where(df["rank"] <= k, df.y / np.log2(df["rank"] + 1), 0.0)
    ideal = df.sort_values(["r", "y"], ascending=[True, False]).assign(rank=lambda d: d.groupby("r").cumcount() + 1)
    ideal["gain"] = np.where(ideal["rank"] <= k, ideal.y / np.log2(ideal["rank"] + 1), 0.0)
    dcg, idcg = df.groupby("r")["gain"].sum(), ideal.groupby("r")["gain"].sum()
    hits = df[df["rank"] <= k].groupby("r")["y"].sum() / df.groupby("r")["y"].sum()
    return {f"ndcg@{k}": float((dcg / idcg).mean()), f"recall@{k}": float(hits.reindex(dcg.index, fill_value=0).mean())}


def gini(exposure: np.ndarray) -> float:
    """0 = every item shown equally often, 1 = one item gets everything."""
    x = np.sort(np.asarray(exposure, dtype=float))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def exposure_health(request: np.ndarray, item: np.ndarray, p: np.ndarray, catalog: int, k: int = 5) -> dict[str, float]:
    """If the model ranked each request's items: Gini of top-k exposure per item and catalog coverage."""
    df = pd.DataFrame({"r": request, "i": item, "p": p}).sort_values(["r", "p"], ascending=[True, False])
    top = df[df.groupby("r").cumcount() < k]
    counts = top["i"].value_counts().to_numpy()
    padded = np.concatenate([counts, np.zeros(max(catalog - len(counts), 0))])
    return {"exposure_gini": gini(padded), "catalog_coverage": len(counts) / catalog if catalog else 0.0}
