"""Trigger a DAG run on the local Airflow through its REST API and follow it: what the demo does instead
of clicking "Trigger" in the UI (the run, its task logs and the decision are then in the UI)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import requests

from flywheel.errors import FlywheelError
from flywheel.polling import wait_until
from flywheel.settings import Settings
from flywheel.stack.services import Airflow


class AirflowRunError(FlywheelError):
    pass


def _session(cfg: Settings) -> tuple[str, requests.Session]:
    svc = Airflow(cfg)
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {svc.token()}"
    return svc.url, s


def wait_parsed(cfg: Settings, dag_id: str, timeout_s: float = 180) -> None:
    url, s = _session(cfg)
    try:
        wait_until(
            lambda: s.get(f"{url}/api/v2/dags/{dag_id}", timeout=10).ok, timeout_s, f"DAG {dag_id}", interval_s=2
        )
    except FlywheelError:
        errors = s.get(f"{url}/api/v2/importErrors", timeout=10).json()
        raise AirflowRunError(f"DAG {dag_id} not parsed after {timeout_s:.0f}s; import errors: {errors}") from None


def trigger_and_wait(
    cfg: Settings,
    dag_id: str,
    start: datetime,
    end: datetime,
    timeout_s: float = 1200,
    log: Callable[[str], None] = print,
    by: str = "flywheel",
) -> dict:
    """Run `dag_id` for the data interval [start, end) and wait for it; returns its task states. The run is
    named `<by>__<start>_<end>` and noted as triggered by `by`; an earlier run of it is deleted first."""
    wait_parsed(cfg, dag_id)
    url, s = _session(cfg)
    run_id = f"{by}__{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    if s.get(f"{url}/api/v2/dags/{dag_id}", timeout=10).json()["is_paused"]:
        s.patch(f"{url}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=10).raise_for_status()
        _drop_catchup_run(url, s, dag_id, log)
    s.delete(f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=10)
    body = {
        "dag_run_id": run_id,
        "logical_date": start.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
        "note": f"triggered by `flywheel {by}`" if by != "flywheel" else "triggered by flywheel",
    }
    r = s.post(f"{url}/api/v2/dags/{dag_id}/dagRuns", json=body, timeout=30)
    if r.status_code >= 400:
        raise AirflowRunError(f"trigger {dag_id} failed: {r.status_code} {r.text[:500]}")
    shown = [""]  # the last task summary logged

    def finished() -> dict | None:
        run = s.get(f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}", timeout=10).json()
        tis = s.get(f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", timeout=10).json()
        states = {t["task_id"]: t["state"] for t in tis.get("task_instances", [])}
        summary = ", ".join(f"{k}={v}" for k, v in states.items() if v)
        if summary != shown[0]:
            log(f"  … {summary}")
            shown[0] = summary
        if run.get("state") in ("success", "failed"):
            return {"state": run["state"], "tasks": states, "run_id": run_id}
        return None

    return wait_until(finished, timeout_s, f"{dag_id} run {run_id}", interval_s=3, error=AirflowRunError)


def _drop_catchup_run(url: str, s: requests.Session, dag_id: str, log: Callable[[str], None]) -> None:
    """Unpausing makes the scheduler create a run for the latest interval (catchup=False), which would run
    before ours (max_active_runs=1) on an interval with no data. Wait for it and delete it, so the UI shows
    only the run that was asked for; fail loudly if it cannot be deleted."""

    def scheduled_runs() -> list[dict]:
        runs = s.get(f"{url}/api/v2/dags/{dag_id}/dagRuns", timeout=10).json()["dag_runs"]
        return [r for r in runs if r["run_type"] == "scheduled" and r["state"] in ("queued", "running")]

    try:
        scheduled = wait_until(scheduled_runs, 60, f"a scheduled run of {dag_id}", interval_s=1)
    except FlywheelError:
        return  # the scheduler had no interval to run: nothing to remove
    for r in scheduled:
        log(f"  removing the run the scheduler created on unpause ({r['dag_run_id']})")
        run_url = f"{url}/api/v2/dags/{dag_id}/dagRuns/{r['dag_run_id']}"
        if r["state"] == "running":  # a running run cannot be deleted: stop it first
            s.patch(run_url, json={"state": "failed"}, timeout=10)
        s.delete(run_url, timeout=10)
        if s.get(run_url, timeout=10).status_code != 404:
            raise AirflowRunError(f"could not delete the scheduler's run {r['dag_run_id']} of {dag_id}")
