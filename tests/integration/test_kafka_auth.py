"""Kafka with SASL/SCRAM: `flywheel infra up` starts a local broker that takes only authenticated clients
(its user generated into the local secrets file), and every client Flywheel runs (the producer, the admin
and consumers, the Flink job's source and transactional sinks) speaks it. A broker of its own, on ports
and in a state directory of its own, beside the test stack's PLAINTEXT one."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException
from pydantic import SecretStr

from feature_repo.spec import group
from flink_jobs import features
from flink_jobs.reconcile import reconcile
from flywheel.clients import feast_store
from flywheel.clients.kafka import admin
from flywheel.events.producer import write_records
from flywheel.events.simulator import Faults, SimConfig, simulate
from flywheel.settings import read_env_file
from flywheel.stack import control as stack
from tests.integration.feature_checks import assert_offline_matches_reference, fresh_job

pytestmark = pytest.mark.integration


def test_a_sasl_broker_refuses_anonymous_clients_and_the_feature_job_runs_authenticated(cfg, monkeypatch):
    assert cfg.redis.password is not None
    overrides = {
        "FLYWHEEL_VAR_DIR": "var/test-sasl",
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:29092",
        "FLYWHEEL_KAFKA__CONTROLLER_PORT": "29093",
        "FLYWHEEL_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FLYWHEEL_REDIS__PASSWORD": cfg.redis.password.get_secret_value(),  # the test stack's Redis
    }
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    sasl = stack.up(["kafka"])
    try:
        secrets = read_env_file(sasl.secrets_file)
        assert secrets["FLYWHEEL_KAFKA__USERNAME"] == sasl.kafka.username == "flywheel"
        assert sasl.kafka.password is not None
        assert secrets["FLYWHEEL_KAFKA__PASSWORD"] == sasl.kafka.password.get_secret_value()

        assert admin(sasl.kafka).list_topics(timeout=30).brokers  # authenticated: answered
        for refused in (
            sasl.kafka.model_copy(update={"security_protocol": "PLAINTEXT"}),  # no SASL at all
            sasl.kafka.model_copy(update={"password": SecretStr("not-the-password")}),
        ):
            with pytest.raises(KafkaException):
                admin(refused).list_topics(timeout=10)

        feast_store.ensure_applied(sasl)
        opt = fresh_job(sasl, "sasl", bounded=True)
        faults = Faults(out_of_order_rate=0.05, late_rate=0.01, duplicate_rate=0.02, malformed_rate=0.01)
        sim = simulate(SimConfig(events=3_000, users=150, items=80, categories=5, days=0.5, seed=37, faults=faults))
        write_records(sasl.kafka, sim.keys, sim.values, opt.topic)
        features.run(sasl, opt)
        r = reconcile(sasl, opt)
        assert r.events_in == 3_000 and r.pending == 0, r.as_dict()
        assert r.dead_lettered == sim.stats.malformed and r.late > 0
        for name in ("user_stats_1h", "item_stats_7d"):
            assert_offline_matches_reference(sasl, opt, sim, group(name))  # the late topic too, read with SASL
    finally:
        stack.down(["kafka"], purge=True, cfg=sasl)
