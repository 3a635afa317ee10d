"""What each Airflow task does, as plain functions (dags/ only wires them together).

Everything here is importable without side effects; heavy imports happen inside the functions, so the
DAG processor parses dags/ in milliseconds. Functions take and return small JSON-able values (paths,
versions, decisions), which is what goes through XCom.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from flywheel.settings import load_settings

log = logging.getLogger(__name__)


def run_key(mode: str, end: datetime) -> str:
    """The idempotency key of a run: the same interval gives the same key, whoever spells its end."""
    return f"{mode}:{end.isoformat()}"


def build_trainset(start: datetime, end: datetime, mode: str) -> str:
    """The training set for a retraining run ending at `end`: the last 7 days (incremental) or the full
    history window (full). Its name carries the interval, so a re-run rewrites the same folder.

    An interval without impressions skips the run (every task after this one is skipped): there is nothing
    to train or judge on, which is not a data-quality failure and decides nothing in the registry."""
    from airflow.sdk.exceptions import AirflowSkipException

    from flywheel.clients import feast_store
    from training import trainset

    cfg = load_settings()
    days = cfg.training.incremental_window_days if mode == "incremental" else cfg.training.full_window_days
    begin = min(start, end - timedelta(days=days))
    name = f"{mode}_{begin:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    manifest, out = trainset.build(cfg, feast_store.store(cfg), begin, end, name=name)
    log.info(
        f"training set {out}: {manifest.rows} rows, label rates {manifest.label_rates}, final={manifest.labels_final}"
    )
    if manifest.rows == 0:
        raise AirflowSkipException(f"no impressions in {begin:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}: nothing to do")
    return str(out)


def reference_trainset() -> str | None:
    """The champion's training set: the reference window for drift checks."""
    from training import pipeline

    cfg = load_settings()
    champion = pipeline.registry(cfg).alias("champion")
    if champion is None or not champion.trainset_dir or not Path(champion.trainset_dir).exists():
        return None
    return champion.trainset_dir


def validate(trainset_dir: str) -> dict:
    from training import pipeline

    ref = reference_trainset()
    result = pipeline.validate_stage(load_settings(), Path(trainset_dir), Path(ref) if ref else None)
    return {"passed": result["passed"], "reasons": result["reasons"], "data_docs": result["data_docs"]}


def record_blocked(trainset_dir: str, reasons: list[str], key: str) -> dict:
    """A failed critical expectation: no training, no promotion, and the reasons in the audit log (once)."""
    from training import pipeline

    reg = pipeline.registry(load_settings())
    if not any(e.get("run_key") == key for e in reg.audit()):
        reg.record("blocked_by_data", None, reasons, run_key=key, trainset=trainset_dir)
    for r in reasons:
        log.warning(f"blocked: {r}")
    return {"outcome": "blocked_by_data", "reasons": reasons}


def train(trainset_dir: str, mode: str, key: str) -> str:
    from training import pipeline

    cfg = load_settings()
    reg = pipeline.registry(cfg)
    if mode == "incremental" and reg.alias("champion") is None:
        log.info("no champion yet: training from scratch instead of warm-starting")
        mode = "full"
    return pipeline.train_stage(cfg, Path(trainset_dir), mode, run_key=key)


def evaluation_report(version: str) -> dict:
    """Log the candidate's metrics, its off-policy value and its comparison with the champion (what a
    reviewer reads in the task log)."""
    from training import pipeline

    mv = pipeline.registry(load_settings()).get(version)
    m = mv.metrics
    for k in ("auc", "logloss", "ece", "ndcg@5", "recall@5", "exposure_gini", "catalog_coverage"):
        log.info(f"{k:>18}: {m.get(k, float('nan')):.4f}")
    ope = m["ope"]
    log.info(f"off-policy: {ope['rows']} holdout rows, coverage {ope['coverage']:.1%}, {ope['candidates']} candidates")
    for policy, est in ope["policies"].items():
        e = est["snips"]
        log.info(f"{'SNIPS ' + policy:>18}: {e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]")
    champ = m.get("champion")
    if champ and "ope" in champ:
        d = champ["ope"]["versus"]["model - champion"]["snips"]
        log.info(f"against champion {champ['version']} on {champ['rows']} rows neither trained on: AUC "
                 f"{champ['candidate_auc']:.4f} vs {champ['auc']:.4f}, SNIPS difference {d['value']:+.4f} "
                 f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")  # fmt: skip
    elif champ:
        log.info(f"champion {champ['version']}: only {champ['rows']} holdout rows outside its training windows")
    return {k: m[k] for k in ("auc", "logloss", "ece")}


def gate(version: str) -> list[str]:
    from training import pipeline

    cfg = load_settings()
    reasons = pipeline.gate(cfg, pipeline.registry(cfg).get(version))
    log.info("gate passed" if not reasons else "gate failed:\n  " + "\n  ".join(reasons))
    return reasons


def decide(version: str) -> dict:
    """Promote if the gate passes, else record the rejection; a re-run decides nothing twice."""
    from training import pipeline

    d = pipeline.decide_stage(load_settings(), version)
    log.info(f"{d.version}: {d.outcome}\n  " + "\n  ".join(d.reasons))
    return d.as_dict()


def rollback_check(end: datetime) -> dict:
    """Score champion and previous on labels since the last promotion; roll back if the champion is worse."""
    from flywheel.clients import feast_store
    from training import pipeline, trainset

    cfg = load_settings()
    reg = pipeline.registry(cfg)
    aliases = reg.aliases()
    champion = aliases["champion"]
    promotions = [e for e in reg.audit() if e["decision"] == "promoted" and e["version"] == champion]
    if not champion or not aliases["previous"] or not promotions:
        log.info("nothing to check: no previous model")
        return {"outcome": "no_change"}
    since = datetime.fromisoformat(reg.get(champion).data_window["end"])
    if since >= end:
        log.info(f"no labeled data after the champion's window ({since}) yet")
        return {"outcome": "no_change"}
    name = f"fresh_{since:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    manifest, out = trainset.build(cfg, feast_store.store(cfg), since, end, name=name)
    if manifest.rows < cfg.validation.min_rows:
        log.info(f"only {manifest.rows} fresh labels (< {cfg.validation.min_rows}): too few to judge")
        return {"outcome": "no_change"}
    quality = pipeline.validate_stage(cfg, out)  # judging models on broken data would be noise
    if not quality["passed"]:
        log.info(f"fresh labels fail the quality checks, not judging on them: {'; '.join(quality['reasons'])}")
        return {"outcome": "no_change", "reasons": quality["reasons"]}
    d = pipeline.rollback_stage(cfg, out)
    log.info(f"{d.outcome}: {'; '.join(d.reasons)}")
    return d.as_dict()


def online_check(end: datetime) -> dict:
    """Roll back if the champion's served lists did significantly worse than the previous model's (a split
    or interleaving experiment) over the window before `end`; the service follows the alias by itself."""
    from training import online

    out = online.check(load_settings(), end)
    log.info(f"{out['outcome']}: {'; '.join(out.get('reasons', []))}")
    return out


def ensure_feature_job() -> dict:
    """The Flink feature job runs on the cluster: if not, resume it from its latest savepoint or retained
    checkpoint, or submit it fresh."""
    from flink_jobs.features import JOB_NAME
    from flywheel.clients import flink as flink_cluster

    cfg = load_settings()
    jobs = flink_cluster.list_jobs(cfg)
    running = [j for j in jobs if j.get("name") == JOB_NAME and j.get("state") == "RUNNING"]
    if running:
        log.info(f"feature job running: {running[0]['jid']}")
        return {"action": "none", "job": running[0]["jid"]}
    restore = flink_cluster.latest_restore_point(cfg)
    job = flink_cluster.submit(cfg, [], savepoint=restore)
    log.info(f"feature job {'resumed from ' + restore if restore else 'submitted'}: {job}")
    return {"action": "resumed" if restore else "submitted", "job": job, "from": restore}


def feast_apply_if_changed() -> dict:
    """`feast apply` when feature_repo/ (or the registry) changed since the last apply."""
    from flywheel.clients import feast_store

    return {"applied": feast_store.ensure_applied(load_settings())}


def backfill_online(start: datetime, end: datetime) -> dict:
    """Load the offline values of [start, end) into Redis (Feast materialize): after a Redis loss."""
    from flywheel.clients import feast_store

    cfg = load_settings()
    feast_store.store(cfg).materialize(start_date=start, end_date=end)
    log.info(f"materialized {start} .. {end} into the online store")
    return {"start": start.isoformat(), "end": end.isoformat()}


def retrain_here(start: datetime, end: datetime, mode: str) -> None:
    """The retraining DAG's path through these tasks, in this process, for [start, end): what `flywheel bench
    loop` runs where no Airflow is up. The decision lands in the registry's audit log, as from the DAG."""
    from airflow.sdk.exceptions import AirflowSkipException

    key = run_key(mode, end)
    try:
        trainset_dir = build_trainset(start, end, mode)
    except AirflowSkipException as skipped:
        log.info(str(skipped))
        return
    checked = validate(trainset_dir)
    if not checked["passed"]:
        record_blocked(trainset_dir, checked["reasons"], key)
        return
    version = train(trainset_dir, mode, key)
    evaluation_report(version)
    decide(version)
    rollback_check(end)
