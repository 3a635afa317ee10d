"""Tests run their own stack on separate ports and state (var/test-stack), so a developer's running
stack is never touched, and stop it afterwards."""

from __future__ import annotations

import os

TEST_ENV = {
    "FLYWHEEL_VAR_DIR": "var/test-stack",
    "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:19092",
    "FLYWHEEL_KAFKA__CONTROLLER_PORT": "19093",
    "FLYWHEEL_REDIS__PORT": "16379",
    "FLYWHEEL_FLINK__REST_URL": "http://127.0.0.1:18081",
    "FLYWHEEL_FLINK__RPC_PORT": "16123",
    "FLYWHEEL_FLINK__TASKMANAGERS": "2",  # the cluster tests run a job across two
    "FLYWHEEL_AIRFLOW__URL": "http://127.0.0.1:18080",
    "FLYWHEEL_AIRFLOW__LOG_SERVER_PORT": "18793",
}


def pytest_configure(config) -> None:
    os.environ.update(TEST_ENV)
