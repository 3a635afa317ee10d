"""DAG runs with `dag.test()` in a subprocess, on an Airflow metadata database of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from flywheel.settings import REPO_ROOT

RUN_DAG = r"""
import importlib, json, sys
import pendulum
sys.path.insert(0, sys.argv[1])
from airflow.sdk import DAG
module = importlib.import_module(sys.argv[2])
dag = next(v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == sys.argv[2])
run = dag.test(logical_date=pendulum.parse(sys.argv[3]))
tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print("RESULT " + json.dumps({"state": str(run.state), "tasks": tasks}))
"""


def airflow_env(home: Path) -> dict[str, str]:
    """The environment of a DAG run: Airflow home `home` (its database migrated), our DAG folder."""
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    airflow = str(REPO_ROOT / ".venv" / "bin" / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    return env


def run_dag(env: dict[str, str], dag_id: str, run_after: datetime) -> dict[str, str]:
    """One successful run of the DAG at `run_after`: its tasks' states."""
    out = subprocess.run(
        [sys.executable, "-c", RUN_DAG, str(REPO_ROOT / "dags"), dag_id, run_after.isoformat()],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-4000:] + out.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["state"].endswith("success"), out.stdout[-4000:]
    return result["tasks"]
