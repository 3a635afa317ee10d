from __future__ import annotations

import pytest
from pydantic import ValidationError

from flywheel.errors import FlywheelError
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


def test_checkpoint_and_savepoint_storage_take_a_path_or_a_uri(tmp_path):
    cfg = load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path)})
    assert cfg.checkpoint_uri == (tmp_path / "flink" / "checkpoints").as_uri()
    assert cfg.savepoint_uri == (tmp_path / "flink" / "savepoints").as_uri()
    cfg = load_settings(
        {
            "FLYWHEEL_VAR_DIR": str(tmp_path),
            "FLYWHEEL_FEATURES__CHECKPOINT_DIR": "s3://bucket/flywheel/checkpoints/",
            "FLYWHEEL_FEATURES__SAVEPOINT_DIR": "shared/savepoints",
        }
    )
    assert cfg.checkpoint_uri == "s3://bucket/flywheel/checkpoints"
    assert cfg.savepoint_uri == (REPO_ROOT / "shared" / "savepoints").as_uri()


def test_the_newest_savepoint_or_retained_checkpoint_is_the_restore_point(tmp_path):
    import os

    from flywheel.clients.flink import latest_restore_point

    cfg = load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path)})
    assert latest_restore_point(cfg) is None  # nothing there yet, not even the folders
    points = [
        tmp_path / "flink" / "savepoints" / "savepoint-3f2a1b-0c9d8e7f6a5b",
        tmp_path / "flink" / "checkpoints" / "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c" / "chk-12",
        tmp_path / "flink" / "checkpoints" / "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c" / "chk-13",
    ]
    for age, point in zip((30, 10, 20), points, strict=True):
        point.mkdir(parents=True)
        (point / "_metadata").write_bytes(b"x")
        os.utime(point / "_metadata", (1_800_000_000 - age, 1_800_000_000 - age))
    (tmp_path / "flink" / "checkpoints" / "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c" / "shared").mkdir()
    assert latest_restore_point(cfg) == str(points[1])


def test_kafka_security_reaches_librdkafka_and_the_java_clients(tmp_path):
    base = {"FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "kafka.prod:9094"}
    plain = load_settings(base).kafka
    assert plain.client_config() == {"bootstrap.servers": "kafka.prod:9094"} and plain.java_config(shaded=True) == {}
    secure = {"FLYWHEEL_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "FLYWHEEL_KAFKA__USERNAME": "app",
              "FLYWHEEL_KAFKA__PASSWORD": "p'w\"x", "FLYWHEEL_KAFKA__SSL_CA_LOCATION": "/etc/ca.pem"}  # fmt: skip
    k = load_settings({**base, **secure}).kafka
    assert k.client_config() == {"bootstrap.servers": "kafka.prod:9094", "security.protocol": "sasl_ssl",
                                 "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "app", "sasl.password": 'p\'w"x',
                                 "ssl.ca.location": "/etc/ca.pem"}  # fmt: skip
    flink = k.java_config(shaded=True)
    assert flink["sasl.jaas.config"] == (  # a double quote escaped: Kafka's JAAS tokenizer reads \" as "
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="app" password="p\'w\\"x";'
    )
    assert flink["security.protocol"] == "SASL_SSL" and flink["ssl.truststore.type"] == "PEM"
    assert k.java_config(shaded=False)["sasl.jaas.config"].startswith("org.apache.kafka.common.security.scram.")
    assert "p'w" not in repr(k)


def test_sasl_without_credentials_names_the_fix(tmp_path):
    k = load_settings({"FLYWHEEL_VAR_DIR": str(tmp_path), "FLYWHEEL_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT"}).kafka
    with pytest.raises(FlywheelError, match="FLYWHEEL_KAFKA__USERNAME and FLYWHEEL_KAFKA__PASSWORD"):
        k.client_config()
