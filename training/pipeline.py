"""The retraining stages the Airflow DAGs and the CLI call: validate -> train -> evaluate -> gate ->
promote (or keep), and the post-promotion rollback check. Each stage reads and writes files (training
sets, the registry), so a task can be retried or re-run for the same data interval without side effects
beyond the first run's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from training import evaluate as ev
from training import ope
from training.model import ModelConfig, Ranker, to_batch
from training.registry import ModelVersion, Registry
from training.train import TrainConfig, fit, predict
from training.trainset import Manifest

log = logging.getLogger(__name__)

ITEM_SIDE = ("item_", "popularity_trend")  # dense columns that describe the item, swapped for counterfactuals


@dataclass
class Decision:
    version: str | None
    outcome: str  # promoted | kept | blocked_by_data | rejected_by_metrics | rolled_back | no_change
    reasons: list[str]

    def as_dict(self) -> dict:
        return {"version": self.version, "outcome": self.outcome, "reasons": self.reasons}


def registry(cfg: Settings) -> Registry:
    return Registry(cfg.training.registry_dir)


def read_trainset(path: Path) -> tuple[pa.Table, Manifest]:
    manifest = Manifest.read(path / "manifest.json")
    table = pq.read_table([str(path / f) for f in manifest.files]) if manifest.files else None
    if table is None or table.num_rows == 0:
        raise FlywheelError(f"{path}: the training set is empty; build one with `flywheel trainset build`")
    return table.sort_by("event_timestamp"), manifest


def feature_columns(table: pa.Table, manifest: Manifest) -> tuple[str, ...]:
    """The service's features plus the missing-indicator columns, as the manifest lists them."""
    return tuple(c for c in manifest.missing_rates if c in table.column_names)


def split_holdout(table: pa.Table, fraction: float) -> tuple[pa.Table, pa.Table]:
    """Time-based: the latest `fraction` of rows (by event time) is the holdout."""
    cut = int(table.num_rows * (1 - fraction))
    return table.slice(0, cut), table.slice(cut)


def train_config(cfg: Settings, incremental: bool) -> TrainConfig:
    t = cfg.training
    return TrainConfig(
        epochs=t.incremental_epochs if incremental else t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        incremental_lr=t.incremental_lr,
        weight_clip=t.weight_clip,
        seed=t.seed,
    )


def load_model(reg: Registry, version: str) -> tuple[Ranker, ModelConfig]:
    mv = reg.get(version)
    stored: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in mv.model_config.items()}
    mcfg = ModelConfig(**stored)  # lists came back from JSON as lists
    model = Ranker(mcfg)
    model.load_state_dict(reg.load_state(version))
    model.eval()
    return model, mcfg


# ---------------------------------------------------------------------------------------------------
# Evaluation


def _counterfactual_logits(model: Ranker, mcfg: ModelConfig, rows: pa.Table, cands: pa.Table) -> np.ndarray:
    """(rows, candidates) logits: each row's user-side inputs with each candidate's item-side inputs."""
    base = to_batch(rows, mcfg, np.ones(rows.num_rows))
    cb = to_batch(cands, mcfg, np.ones(cands.num_rows))
    dense_idx = [i for i, c in enumerate(mcfg.dense) if c.startswith(ITEM_SIDE)]
    cat_idx = [i for i, c in enumerate(mcfg.categorical) if c in ("item_id", "item_category")]
    out = np.zeros((rows.num_rows, cands.num_rows), dtype=np.float32)
    with torch.no_grad():
        for j in range(cands.num_rows):
            dense, cats = base.dense.clone(), base.cats.clone()
            dense[:, dense_idx] = cb.dense[j, dense_idx]
            cats[:, cat_idx] = cb.cats[j, cat_idx]
            out[:, j] = model(dense, cats).numpy()
    return out


def _candidates(train: pa.Table, holdout: pa.Table, k: int) -> pa.Table:
    """The k most shown items of the holdout, each with its latest row from training (its item-side state
    when the holdout starts)."""
    counts = pc.value_counts(holdout.column("item_id")).to_pylist()
    top = [c["values"] for c in sorted(counts, key=lambda c: (-c["counts"], str(c["values"])))[:k]]
    wanted = set(top)
    latest: dict[str, tuple[pa.Table, int]] = {}
    for i, item in enumerate(train.column("item_id").to_pylist()):  # sorted by time: the last one wins
        if item in wanted:
            latest[item] = (train, i)
    for i, item in enumerate(holdout.column("item_id").to_pylist()):  # items new in the holdout: first sight
        if item in wanted and item not in latest:
            latest[item] = (holdout, i)
    return pa.concat_tables([latest[i][0].slice(latest[i][1], 1) for i in top])


def evaluate_model(model: Ranker, mcfg: ModelConfig, train: pa.Table, holdout: pa.Table, cfg: Settings) -> dict:
    """Holdout metrics, ranking metrics per request, off-policy value with baselines, exposure health."""
    hb = to_batch(holdout, mcfg, np.ones(holdout.num_rows))
    p = predict(model, hb)
    y = hb.label.numpy()
    metrics: dict[str, Any] = {
        "auc": ev.auc(y, p),
        "logloss": ev.log_loss(y, p),
        "ece": ev.expected_calibration_error(y, p),
        **ev.ranking_metrics(hb.extra["request_id"], y, p, k=5),
        **ev.exposure_health(
            hb.extra["request_id"],
            hb.extra["item_id"],
            p,
            catalog=len(set(train.column("item_id").to_pylist()) | set(hb.extra["item_id"])),
        ),
        "holdout_rows": int(holdout.num_rows),
        "holdout_click_rate": float(y.mean()),
    }
    metrics["ope"] = off_policy(model, mcfg, train, holdout, cfg)
    return metrics


def off_policy(model: Ranker, mcfg: ModelConfig, train: pa.Table, holdout: pa.Table, cfg: Settings) -> dict:
    o = cfg.training.ope
    cands = _candidates(train, holdout, o.candidates)
    index = {item: j for j, item in enumerate(cands.column("item_id").to_pylist())}
    logged = np.array([index.get(i, -1) for i in holdout.column("item_id").to_pylist()])
    keep = np.flatnonzero(logged >= 0)
    if len(keep) > o.rows:
        keep = np.sort(np.random.default_rng(cfg.training.seed).choice(keep, o.rows, replace=False))
    rows = holdout.take(pa.array(keep))
    logits = _counterfactual_logits(model, mcfg, rows, cands)
    reward = np.asarray(rows.column("label_click").to_numpy(zero_copy_only=False), dtype=float)
    prop = np.asarray(rows.column("propensity").to_numpy(zero_copy_only=False), dtype=float)
    q = 1 / (1 + np.exp(-logits))
    li = logged[keep]
    clicks = np.zeros(cands.num_rows)
    for item, c in zip(train.column("item_id").to_pylist(), train.column("label_click").to_pylist(), strict=True):
        if item in index:
            clicks[index[item]] += c
    policies = {
        "model": ope.softmax(logits, o.temperature),
        "random": ope.uniform_policy(len(keep), cands.num_rows),
        "popularity": ope.popularity_policy(len(keep), clicks),
    }
    out: dict[str, object] = {
        name: {k: e.as_dict() for k, e in ope.estimate(pi, li, reward, prop, q).items()}
        for name, pi in policies.items()
    }
    out["rows"] = int(len(keep))
    out["candidates"] = int(cands.num_rows)
    out["logged_click_rate"] = float(reward.mean()) if len(reward) else 0.0
    return out


# ---------------------------------------------------------------------------------------------------
# Stages


def validate_stage(cfg: Settings, trainset_dir: Path, reference_dir: Path | None = None) -> dict:
    """Great Expectations on the training set (drift against the reference set when given)."""
    from validation.suites import validate

    manifest = Manifest.read(trainset_dir / "manifest.json")
    if manifest.rows == 0:  # a quiet interval or a stalled pipeline: nothing to train on, say so
        reason = f"quality: the training set is empty ({manifest.window_start} .. {manifest.window_end})"
        result = {"passed": False, "reasons": [reason], "checks": [], "data_docs": None, "summary": reason}
        (trainset_dir / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
        log.info(reason)
        return result
    table, _ = read_trainset(trainset_dir)
    reference = read_trainset(reference_dir)[0].to_pandas() if reference_dir else None
    features = [c for c in manifest.missing_rates if not c.endswith("__missing")]
    report = validate(table.to_pandas(), features, list(manifest.label_counts), cfg, reference, name=manifest.name)
    result = report.as_dict() | {"summary": report.summary(), "reasons": report.reasons()}
    (trainset_dir / "validation.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log.info(report.summary())
    return result


def train_stage(cfg: Settings, trainset_dir: Path, mode: str, run_key: str | None = None) -> str:
    """Train (full: from scratch; incremental: warm start from the champion), evaluate the candidate and
    the champion on the same holdout, register the candidate. Returns its version (idempotent per run_key)."""
    reg = registry(cfg)
    if run_key and (done := reg.find_run(run_key)):
        log.info(f"{run_key} already trained as {done.version}")
        return done.version
    table, manifest = read_trainset(trainset_dir)
    train, holdout = split_holdout(table, cfg.training.holdout_fraction)
    champion = reg.alias("champion")
    champ = load_model(reg, champion.version) if champion else None  # read and checked once
    if mode == "incremental":
        if champ is None:
            raise FlywheelError("incremental training needs a champion to start from: run the monthly full DAG first")
        mcfg = champ[1]
    else:
        mcfg = ModelConfig(dense=feature_columns(table, manifest))
    warm = champ[0].state_dict() if champ is not None and mode == "incremental" else None
    model, curves = fit(train, holdout, mcfg, train_config(cfg, mode == "incremental"), warm_start=warm)
    metrics = evaluate_model(model, mcfg, train, holdout, cfg)
    metrics["curves"] = curves
    if champ is not None and champion is not None:
        metrics["champion"] = {"version": champion.version} | evaluate_model(*champ, train, holdout, cfg)
    validation_file = trainset_dir / "validation.json"
    validation = json.loads(validation_file.read_text()) if validation_file.exists() else {}
    mv = ModelVersion(
        version="",
        mode=mode,
        parent_version=champion.version if (champion and mode == "incremental") else None,
        data_window={"start": manifest.window_start, "end": manifest.window_end},
        trainset_sha256=manifest.content_sha256,
        feature_service=manifest.feature_service,
        feature_service_version=manifest.feature_service_version,
        model_config=mcfg.as_dict(),
        metrics=metrics,
        validation={"passed": validation.get("passed"), "reasons": validation.get("reasons", [])},
        run_key=run_key,
        trainset_dir=str(trainset_dir),
    )
    mv = reg.register(model.state_dict(), mv)
    _plot_curves(curves, reg.root / "versions" / mv.version / "curves.png", mv.version)
    log.info(
        f"registered {mv.version}: AUC {metrics['auc']:.4f}, "
        f"log-loss {metrics['logloss']:.4f}, ECE {metrics['ece']:.4f}"
    )
    return mv.version


def gate(cfg: Settings, mv: ModelVersion) -> list[str]:
    """Reasons to reject (empty = pass): floors, no regression vs the champion, validation, off-policy value."""
    g, m = cfg.training.gate, mv.metrics
    reasons = []
    if mv.validation.get("passed") is False:
        reasons += [f"data validation failed: {r}" for r in mv.validation.get("reasons", [])] or [
            "data validation failed"
        ]
    if m["auc"] < g.min_auc:
        reasons.append(f"AUC {m['auc']:.4f} below the floor {g.min_auc}")
    if m["ece"] > g.max_ece:
        reasons.append(f"calibration error {m['ece']:.4f} above the ceiling {g.max_ece}")
    champ = m.get("champion")
    if champ:
        if m["auc"] < champ["auc"] - g.max_auc_drop:
            reasons.append(f"AUC {m['auc']:.4f} regresses from champion {champ['version']} ({champ['auc']:.4f})")
        if m["logloss"] > champ["logloss"] + g.max_logloss_rise:
            reasons.append(f"log-loss {m['logloss']:.4f} regresses from champion ({champ['logloss']:.4f})")
        est = g.ope_estimator
        ours, theirs = m["ope"]["model"][est], champ["ope"]["model"][est]
        if ours["ci_high"] < theirs["value"]:
            ci = f"[{ours['ci_low']:.4f}, {ours['ci_high']:.4f}]"
            reasons.append(f"off-policy value ({est}) {ours['value']:.4f} {ci} "
                           f"is significantly below the champion's {theirs['value']:.4f}")  # fmt: skip
    return reasons


def decide_stage(cfg: Settings, version: str) -> Decision:
    """Gate the candidate; promote it if it passes, otherwise record why the champion stays."""
    reg = registry(cfg)
    mv = reg.get(version)
    if reg.aliases()["champion"] == version:
        return Decision(version, "no_change", ["already champion (re-run of the same interval)"])
    if any(e["version"] == version and e["decision"] != "promoted" for e in reg.audit()):
        return Decision(version, "no_change", ["already decided (re-run of the same interval)"])
    reasons = gate(cfg, mv)
    if not reasons:
        why = [
            f"AUC {mv.metrics['auc']:.4f}, ECE {mv.metrics['ece']:.4f}; passed floors, champion comparison, validation"
        ]
        reg.promote(version, why)
        return Decision(version, "promoted", why)
    outcome = "blocked_by_data" if mv.validation.get("passed") is False else "rejected_by_metrics"
    reg.record(outcome, version, reasons, champion=reg.aliases()["champion"])
    return Decision(version, outcome, reasons)


def rollback_stage(cfg: Settings, fresh_dir: Path) -> Decision:
    """Score the champion and the previous model on labeled data newer than the promotion; roll back if the
    champion is worse by more than the threshold."""
    reg = registry(cfg)
    aliases = reg.aliases()
    champion, previous = aliases["champion"], aliases["previous"]
    if not champion or not previous:
        return Decision(champion, "no_change", ["no previous model to compare with"])
    table, _ = read_trainset(fresh_dir)
    scores = {}
    for name, version in (("champion", champion), ("previous", previous)):
        model, mcfg = load_model(reg, version)
        b = to_batch(table, mcfg, np.ones(table.num_rows))
        scores[name] = ev.auc(b.label.numpy(), predict(model, b))
    drop = scores["previous"] - scores["champion"]
    detail = (
        f"fresh AUC: champion {aliases['champion']} {scores['champion']:.4f}, "
        f"previous {aliases['previous']} {scores['previous']:.4f}"
    )
    if drop > cfg.training.rollback_max_auc_drop:
        reasons = [f"{detail}: drop {drop:.4f} > {cfg.training.rollback_max_auc_drop}"]
        reg.rollback(reasons)
        return Decision(aliases["previous"], "rolled_back", reasons)
    reg.record("kept", aliases["champion"], [detail], check="rollback")
    return Decision(aliases["champion"], "kept", [detail])


def _plot_curves(curves: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    epochs = range(1, len(curves["train_loss"]) + 1)
    axes[0].plot(epochs, curves["train_loss"], label="train (IPS-weighted)")
    axes[0].plot(epochs, curves["valid_logloss"], label="holdout log-loss")
    axes[0].legend()
    axes[1].plot(epochs, curves["valid_auc"], color="C2")
    axes[1].set_title("holdout AUC")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
