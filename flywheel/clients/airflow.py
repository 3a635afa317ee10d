"""Trigger a DAG run on the local Airflow through its REST API and follow it: what the demo does instead
of clicking "Trigger" in the UI (the run, its task logs and the decision are then in the UI)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import requests

from flywheel.errors import FlywheelError
from flywheel.polling import wait_until
from flywheel.settings import Settings


class AirflowRunError(FlywheelError):
    pass


def token(cfg: Settings) -> str:
    """A bearer token for Airflow's REST API, from the configured user and password."""
    a = cfg.airflow
    r = requests.post(f"{a.url}/auth/token", json={"username": a.username, "password": a.password_value()}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def _session(cfg: Settings) -> tuple[str, requests.Session]:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token(cfg)}"
    return cfg.airflow.url, s


def _wait_parsed(url: str, s: requests.Session, dag_id: str, timeout_s: float = 180) -> None:
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
    url, s = _session(cfg)  # one token for the whole run
    _wait_parsed(url, s, dag_id)
    run_id = f"{by}__{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}"
    if s.get(f"{url}/api/v2/dags/{dag_id}", timeout=10).json()["is_paused"]:
        # The scheduler then also runs the latest interval (catchup=False); an interval without events
        # skips its tasks (orchestration.tasks.build_trainset), so that run ends green and decides nothing.
        s.patch(f"{url}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=10).raise_for_status()
        log(f"  unpaused {dag_id}: the scheduler also runs its latest interval (no events there: skipped)")
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
