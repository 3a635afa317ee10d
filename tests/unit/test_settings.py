from __future__ import annotations

import pytest
from pydantic import ValidationError

from flywheel.settings import REPO_ROOT, load_settings


def test_environment_overrides_nested_keys(tmp_path):
    cfg = load_settings(
        {
            "FLYWHEEL_VAR_DIR": str(tmp_path),
            "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "kafka.prod:9093",
            "FLYWHEEL_REDIS__PASSWORD": "s3cret",
            "FLYWHEEL_FLINK__PARALLELISM": "8",
        }
    )
    assert cfg.kafka.host == "kafka.prod" and cfg.kafka.port == 9093
    assert cfg.flink.parallelism == 8
    assert cfg.redis.connection_string == "127.0.0.1:6379,password=s3cret"
    assert "s3cret" not in repr(cfg.redis)


def test_unknown_keys_are_rejected(tmp_path):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_KAFKA__BOOTSTRAP_SERVER": "typo:9092"})


def test_local_secrets_file_is_read_but_environment_wins(tmp_path):
    (tmp_path / "secrets.env").write_text("FLYWHEEL_REDIS__PASSWORD=from-file\nFLYWHEEL_AIRFLOW__PASSWORD=af\n")
    cfg = load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_REDIS__PASSWORD": "from-env"})
    assert cfg.redis.password.get_secret_value() == "from-env"
    assert cfg.airflow.password.get_secret_value() == "af"


def test_no_secrets_in_the_committed_config():
    text = (REPO_ROOT / "flywheel.yaml").read_text()
    assert "password:" not in text and "requirepass" not in text
