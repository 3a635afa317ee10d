"""Airflow 3 from `flywheel infra up`: auth on, our DAG folder, and a clean stop."""

from __future__ import annotations

import pytest
import requests

from flywheel.clients.airflow import token
from flywheel.stack import control as stack
from flywheel.stack.services import Airflow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def airflow(cfg):
    stack.up(["airflow"], cfg=cfg)
    svc = Airflow(cfg)
    yield svc
    stack.down(["airflow"], cfg=cfg)
    assert svc.proc.pid() is None


def test_api_requires_login_and_accepts_the_configured_credentials(airflow):
    assert requests.get(f"{airflow.url}/api/v2/dags", timeout=10).status_code == 401
    r = requests.get(
        f"{airflow.url}/api/v2/dags", headers={"Authorization": f"Bearer {token(airflow.cfg)}"}, timeout=10
    )
    assert r.status_code == 200
    bad = requests.post(f"{airflow.url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=10)
    assert bad.status_code == 401


def test_every_component_is_healthy(airflow):
    health = requests.get(f"{airflow.url}/api/v2/monitor/health", timeout=10).json()
    assert {k: v["status"] for k, v in health.items()} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }


def test_password_comes_from_the_environment_not_the_repo(airflow, cfg):
    stored = (cfg.var_dir / "airflow" / "passwords.json").read_text()
    assert cfg.airflow.password.get_secret_value() in stored
    assert oct((cfg.var_dir / "airflow" / "passwords.json").stat().st_mode & 0o777) == "0o600"
