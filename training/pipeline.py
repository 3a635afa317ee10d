"""The retraining stages the Airflow DAGs and the CLI call: validate -> train -> evaluate -> gate ->
promote (or keep), and the post-promotion rollback check. Each stage reads and writes files (training
sets, the registry), so a task can be retried or re-run for the same data interval without side effects
beyond the first run's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from training import evaluate as ev
from training import offpolicy
from training.model import ModelConfig, Ranker, to_batch
from training.registry import ModelVersion, Registry
from training.train import TrainConfig, fit, predict
from training.trainset import Manifest

log = logging.getLogger(__name__)


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


def evaluate_model(model: Ranker, mcfg: ModelConfig, train: pa.Table, rows: pa.Table) -> dict:
    """Holdout metrics, ranking metrics per request, exposure health."""
    hb = to_batch(rows, mcfg, np.ones(rows.num_rows))
    p = predict(model, hb)
    y = hb.label.numpy()
    return {
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
        "holdout_rows": int(rows.num_rows),
        "holdout_click_rate": float(y.mean()),
    }


def training_windows(reg: Registry, version: str) -> list[dict[str, str]]:
    """Every data window a version learned from: its own and, through warm starts, its ancestors'."""
    windows, seen = [], set()
    current: str | None = version
    while current and current not in seen:
        seen.add(current)
        mv = reg.get(current)
        if mv.data_window.get("start") and mv.data_window.get("end"):
            windows.append(mv.data_window)
        current = mv.parent_version
    return windows


def outside(rows: pa.Table, windows: list[dict[str, str]]) -> pa.Table:
    """The rows whose event time lies in none of the windows [start, end)."""
    ts = rows.column("event_timestamp")
    inside = pa.array(np.zeros(rows.num_rows, dtype=bool))
    for w in windows:
        lo, hi = (pa.scalar(datetime.fromisoformat(w[k]), ts.type) for k in ("start", "end"))
        inside = pc.or_(inside, pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
    return rows.filter(pc.invert(inside))


def compare_with_champion(
    cfg: Settings,
    candidate: tuple[Ranker, ModelConfig],
    champion: tuple[Ranker, ModelConfig],
    version: str,
    train: pa.Table,
    holdout: pa.Table,
    features: offpolicy.FeatureSource,
    on_holdout: dict,
) -> dict:
    """Both models on the same holdout rows, none of which either was trained on (the candidate never saw
    its holdout; the champion's windows, through its warm-start ancestors, are cut out). `on_holdout` is
    both models' off-policy report on the whole holdout, reused when no row had to be cut."""
    windows = training_windows(registry(cfg), version)
    fair = outside(holdout, windows)
    out: dict[str, Any] = {
        "version": version,
        "rows": int(fair.num_rows),
        "excluded_rows": int(holdout.num_rows - fair.num_rows),
        "champion_windows": windows,
    }
    if fair.num_rows < cfg.training.gate.min_comparison_rows:
        return out
    ours, theirs = evaluate_model(*candidate, train, fair), evaluate_model(*champion, train, fair)
    out |= {"auc": theirs["auc"], "logloss": theirs["logloss"], "candidate_auc": ours["auc"],
            "candidate_logloss": ours["logloss"]}  # fmt: skip
    if fair.num_rows == holdout.num_rows:
        out["ope"] = on_holdout
    else:
        s = offpolicy.setup(train, fair, cfg, features)
        out["ope"] = offpolicy.evaluate({"model": candidate, "champion": champion}, s, train, cfg, "model")
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
    report = validate(
        table.to_pandas(),
        features,
        list(manifest.label_counts),
        cfg,
        reference,
        name=manifest.name,
        docs=cfg.validation.data_docs,
    )
    result = report.as_dict() | {"summary": report.summary(), "reasons": report.reasons()}
    (trainset_dir / "validation.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    log.info(report.summary())
    return result


def train_stage(
    cfg: Settings,
    trainset_dir: Path,
    mode: str,
    run_key: str | None = None,
    features: offpolicy.FeatureSource | None = None,
) -> str:
    """Train (full: from scratch; incremental: warm start from the champion), evaluate the candidate (and
    the champion, on holdout rows neither trained on), register the candidate. Returns its version
    (idempotent per run_key). Off-policy evaluation reads candidates' features from `features` (default:
    the offline store)."""
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
    metrics = evaluate_model(model, mcfg, train, holdout)
    features = features or offpolicy.offline_features(cfg, manifest.feature_service)
    setup = offpolicy.setup(train, holdout, cfg, features)
    models = {"model": (model, mcfg)} | ({"champion": champ} if champ is not None else {})
    metrics["ope"] = offpolicy.evaluate(models, setup, train, cfg, reward_model="model")
    metrics["curves"] = curves
    if champ is not None and champion is not None:
        metrics["champion"] = compare_with_champion(
            cfg, (model, mcfg), champ, champion.version, train, holdout, features, metrics["ope"]
        )
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
    """Reasons to reject (empty = pass): validation; floors (AUC, calibration, an off-policy value not
    significantly below a uniformly random ranking); no regression against the champion on rows neither
    model trained on (AUC, log-loss, and the paired off-policy difference)."""
    g, m = cfg.training.gate, mv.metrics
    est = g.ope_estimator
    reasons = []
    if mv.validation.get("passed") is False:
        reasons += [f"data validation failed: {r}" for r in mv.validation.get("reasons", [])] or [
            "data validation failed"
        ]
    if m["auc"] < g.min_auc:
        reasons.append(f"AUC {m['auc']:.4f} below the floor {g.min_auc}")
    if m["ece"] > g.max_ece:
        reasons.append(f"calibration error {m['ece']:.4f} above the ceiling {g.max_ece}")
    if worse := _significantly_below(m["ope"], "model - random", est):
        reasons.append(f"off-policy value ({est}) significantly below a uniformly random ranking: {worse}")
    champ = m.get("champion")
    if champ:
        if champ["rows"] < g.min_comparison_rows:
            reasons.append(
                f"no fair comparison with champion {champ['version']}: {champ['rows']} holdout rows lie outside its "
                f"training windows ({champ['excluded_rows']} inside), {g.min_comparison_rows} needed"
            )
            return reasons
        on = f"on {champ['rows']} rows neither trained on"
        if champ["candidate_auc"] < champ["auc"] - g.max_auc_drop:
            reasons.append(f"AUC {champ['candidate_auc']:.4f} regresses from champion {champ['version']} "
                           f"({champ['auc']:.4f}) {on}")  # fmt: skip
        if champ["candidate_logloss"] > champ["logloss"] + g.max_logloss_rise:
            reasons.append(f"log-loss {champ['candidate_logloss']:.4f} regresses from champion "
                           f"({champ['logloss']:.4f}) {on}")  # fmt: skip
        if worse := _significantly_below(champ["ope"], "model - champion", est):
            reasons.append(f"off-policy value ({est}) significantly below champion {champ['version']}'s {on}: {worse}")
    return reasons


def _significantly_below(report: dict, pair: str, est: str) -> str | None:
    d = report["versus"][pair][est]
    if d["ci_high"] >= 0:
        return None
    return f"difference {d['value']:+.4f}, paired 95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


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
