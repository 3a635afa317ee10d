"""Typed configuration: `flywheel.yaml` defaults, overridden by FLYWHEEL_* environment variables.

One loader for every stage so that a Flink job, a DAG and a test read the same endpoints; pointing
Flywheel at remote services is a matter of environment, never of code.
"""

from __future__ import annotations

import ipaddress
import os
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from flywheel.errors import FlywheelError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "FLYWHEEL_"
CONFIG_ENV = "FLYWHEEL_CONFIG"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def is_loopback(host: str) -> bool:
    """A service on loopback is ours to start; anything else is remote and only health-checked."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TopicNames(_Model):
    events: str
    dead_letter: str
    late: str


SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
FLINK_KAFKA_SHADED = "org.apache.flink.kafka.shaded."  # where Flink's SQL Kafka connector relocates kafka-clients


def jaas_quoted(value: str) -> str:
    """A JAAS option value: double-quoted, backslash and quote escaped (Kafka's JaasConfig tokenizer)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KafkaSettings(_Model):
    bootstrap_servers: str
    controller_port: int
    heap: str
    partitions: int
    topics: TopicNames
    # How every client Flywheel runs talks to the brokers. A local broker (`flywheel infra up`) speaks
    # PLAINTEXT or SASL_PLAINTEXT with SCRAM; TLS (SSL, SASL_SSL) is for remote brokers.
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_location: str | None = None  # a PEM bundle of the CAs to trust; None: the system's

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def credentials(self) -> tuple[str, str]:
        if self.username is None or self.password is None:
            raise FlywheelError(
                f"kafka.security_protocol is {self.security_protocol}: set FLYWHEEL_KAFKA__USERNAME and "
                "FLYWHEEL_KAFKA__PASSWORD (for a local broker `flywheel infra up` generates them into var/secrets.env)"
            )
        return self.username, self.password.get_secret_value()

    def client_config(self) -> dict[str, str]:
        """librdkafka's connection settings: every confluent-kafka producer, consumer and admin client."""
        conf = {"bootstrap.servers": self.bootstrap_servers}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol.lower()
        if self.sasl:
            user, password = self.credentials()
            conf |= {"sasl.mechanisms": self.sasl_mechanism, "sasl.username": user, "sasl.password": password}
        if self.tls and self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf

    def java_config(self, shaded: bool) -> dict[str, str]:
        """The Java client's security settings (without the servers), for Flink's Kafka connector (`shaded`:
        its kafka-clients is relocated) or Spark's."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        conf: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.sasl:
            user, password = self.credentials()
            module = (FLINK_KAFKA_SHADED if shaded else "") + SCRAM_LOGIN_MODULE
            login = f"username={jaas_quoted(user)} password={jaas_quoted(password)}"
            conf |= {"sasl.mechanism": self.sasl_mechanism, "sasl.jaas.config": f"{module} required {login};"}
        if self.tls and self.ssl_ca_location:
            conf |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": self.ssl_ca_location}
        return conf

    @property
    def host(self) -> str:
        return self.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])


class RedisSettings(_Model):
    host: str
    port: int
    password: SecretStr | None = None
    ssl: bool = False

    @property
    def connection_string(self) -> str:
        """The form Feast's Redis online store takes: host:port,password=...,ssl=..."""
        parts = [f"{self.host}:{self.port}"]
        if self.password:
            parts.append(f"password={self.password.get_secret_value()}")
        if self.ssl:
            parts.append("ssl=true")
        return ",".join(parts)


class FlinkSettings(_Model):
    rest_url: str
    rpc_port: int
    taskmanagers: int = Field(ge=1)  # local cluster: each in a working directory of its own
    taskmanager_slots: int  # per TaskManager
    parallelism: int
    jobmanager_memory: str
    taskmanager_memory: str

    @property
    def host(self) -> str:
        return urlparse(self.rest_url).hostname or "127.0.0.1"

    @property
    def rest_port(self) -> int:
        return urlparse(self.rest_url).port or 8081


class AirflowSettings(_Model):
    url: str
    username: str
    log_server_port: int  # the scheduler's task-log server; the triggerer's is the next port
    password: SecretStr | None = None

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    def password_value(self) -> str:
        if self.password is None:
            raise FlywheelError(
                "no Airflow password: export FLYWHEEL_AIRFLOW__PASSWORD, or run `flywheel infra up` to generate one"
            )
        return self.password.get_secret_value()

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 8080


class ObdSettings(_Model):
    version: str
    sha256: str
    policies: list[str]
    campaigns: list[str]
    speedup: float


class SimulatorSettings(_Model):
    seed: int
    users: int
    items: int
    categories: int
    positions: int
    start: str


class FeatureJobSettings(_Model):
    group_id: str
    watermark_delay_s: int
    idle_timeout_s: int
    checkpoint_interval_ms: int
    state_backend: Literal["rocksdb", "hashmap"]
    online_batch_size: int = Field(ge=1)  # values per pipelined round trip to Redis
    online_keys_per_call: int = Field(ge=1)  # entities per newer-only script call (Redis Cluster: always 1)
    online_max_pending: int = Field(ge=1)  # keys held before they are written regardless of time
    online_live_lag_s: int  # watermark this close to the wall clock: values are written at every watermark
    online_flush_interval_ms: int = Field(ge=1)  # otherwise (catching up) a value waits at most this long
    online_retry_timeout_s: int = Field(ge=1)  # Redis unreachable this long: the job fails and restarts
    restart_attempts: int = Field(10, ge=1)  # restarts in a row (without a stable hour between) before failing
    checkpoint_dir: str | None = None  # a path or a URI (s3://...); None: <var_dir>/flink/checkpoints
    savepoint_dir: str | None = None  # likewise; None: <var_dir>/flink/savepoints


class LabelSettings(_Model):
    """How a label is attributed to an impression (training/labels.py)."""

    attribution_window_s: int  # a click or purchase counts for an impression up to this long after it
    match_on: list[str]  # columns an outcome event must share with its impression
    targets: dict[str, str]  # label column -> the event_type that sets it to 1


class TrainsetSettings(_Model):
    feature_service: str
    output_dir: Path  # relative to var_dir


class DriftSettings(_Model):
    """Drift checks against the reference window, calibrated on it (validation/drift.py)."""

    bins: int  # numeric features: reference-quantile bins for KL divergence
    categorical: list[str]  # columns compared by their category shares
    false_alarm_rate: float = Field(gt=0, lt=1)  # chance that any check fires on a week like the reference
    resamples: int  # random half-splits of the reference's time blocks that measure each check's null
    block_hours: int  # time block of the reference (a block stays whole in a split: keeps within-day correlation)
    # Which drift checks block training and promotion (the others are reported): a feature going missing
    # is a broken pipeline; a shifted distribution is what retraining is for, judged by the champion comparison.
    blocking: list[Literal["mean", "kl", "present", "category"]]


class ValidationSettings(_Model):
    """Great Expectations gates on every training set (validation/suites.py)."""

    min_rows: int
    max_rows: int
    max_null_rate: float  # per feature, absolute (1.0 = off: sparse keys make short windows mostly empty)
    label_rate: tuple[float, float]  # label_click mean must fall inside
    max_position: int  # list slots beyond this are a logging bug
    max_category_null_rate: float  # impressions whose item has no category
    data_docs: bool  # rebuild GE's Data Docs (HTML) after each run: about half a run's time
    drift: DriftSettings


class PolicySettings(_Model):
    """The ranking policy a model serves as, and the one off-policy evaluation judges."""

    temperature: float = Field(gt=0)  # Plackett-Luce draw from softmax(logit / temperature); smaller is greedier
    epsilon: float = Field(ge=0, le=1)  # share of lists drawn uniformly at random instead (exploration)


class ExperimentSettings(_Model):
    """Online champion/challenger: the previous champion keeps a share of traffic after a promotion."""

    mode: Literal["off", "split", "interleave"]  # split: users by hash; interleave: team draft in every list
    previous_share: float = Field(ge=0, le=1)  # split: the share of users the previous champion serves


class ServingSettings(_Model):
    """`flywheel serve`: the ranking service (flywheel/serving)."""

    host: str
    port: int
    workers: int = Field(ge=1)  # processes behind the port: Python ranks on about one core per process
    torch_threads: int = Field(ge=1)  # per worker: the workers are the parallelism, more threads only contend
    feature_cache: bool  # keep item-side features in memory, exact through Redis's invalidation reports
    store_timeout_s: float = Field(gt=0)  # a Redis connect or reply slower than this fails the request (503)
    token: SecretStr | None = None  # bearer token every request but /healthz needs; from the environment
    max_candidates: int = Field(ge=1)
    max_k: int = Field(ge=1)
    reload_interval_s: float = Field(gt=0)  # how often the registry's aliases are checked for a new champion
    catalog_refresh_s: float = Field(gt=0)  # how often item metadata (category) is re-read
    log_queue: int = Field(ge=1)  # served lists waiting for Kafka; beyond it they go to the dead-letter file
    unknown_users: Literal["serve", "reject"]  # serve: cold start from the missing-feature indicators
    experiment: ExperimentSettings

    def require_token(self) -> str:
        if self.token is None:
            raise ValueError(
                "no serving token: export FLYWHEEL_SERVING__TOKEN, or run `flywheel infra up` to generate one"
            )
        return self.token.get_secret_value()


class OpeSettings(_Model):
    candidates: int  # the most frequent items of the evaluation window form the policy's choice set
    rows: int  # evaluation rows sampled for OPE (each is scored against every candidate)
    bootstrap: int  # resamples for the 95% intervals (paired when two policies are compared)


class GateSettings(_Model):
    """TFX-style: absolute floors, then no regression against the champion on the same holdout."""

    min_auc: float
    max_ece: float
    max_auc_drop: float
    max_logloss_rise: float
    ope_estimator: Literal["ips", "snips", "dr"]  # the paired off-policy rules use this estimator
    min_comparison_rows: int  # holdout rows outside the champion's training windows needed to compare at all


class OnlineRollbackSettings(_Model):
    """The online rule of the daily rollback check, on what the service served (training/online.py)."""

    window_days: float = Field(gt=0)  # the served lists of the last window_days of event time are compared
    min_lists: int = Field(ge=1)  # lists per model needed to judge a split (a tenth of it: decided interleavings)
    alpha: float = Field(gt=0, lt=1)  # two-sided significance of "the champion is worse"


class TrainingSettings(_Model):
    epochs: int
    batch_size: int
    lr: float
    incremental_lr: float
    incremental_epochs: int
    weight_clip: float
    seed: int
    holdout_fraction: float  # the latest share of the window, by event time
    full_window_days: int
    incremental_window_days: int
    registry_dir: Path  # relative to var_dir
    rollback_max_auc_drop: float  # live champion this much worse than previous on fresh data -> roll back
    online_rollback: OnlineRollbackSettings
    ope: OpeSettings
    gate: GateSettings


class Settings(_Model):
    var_dir: Path
    build_dir: Path
    kafka: KafkaSettings
    redis: RedisSettings
    flink: FlinkSettings
    airflow: AirflowSettings
    obd: ObdSettings
    simulator: SimulatorSettings
    features: FeatureJobSettings
    labels: LabelSettings
    trainset: TrainsetSettings
    validation: ValidationSettings
    training: TrainingSettings
    policy: PolicySettings
    serving: ServingSettings

    def model_post_init(self, __context: Any) -> None:
        if not self.var_dir.is_absolute():
            self.var_dir = REPO_ROOT / self.var_dir
        if not self.build_dir.is_absolute():
            self.build_dir = REPO_ROOT / self.build_dir
        if not self.training.registry_dir.is_absolute():
            self.training.registry_dir = self.var_dir / self.training.registry_dir
        if not self.trainset.output_dir.is_absolute():
            self.trainset.output_dir = self.var_dir / self.trainset.output_dir

    @property
    def offline_dir(self) -> Path:
        """Where the feature job writes its Parquet: one folder per feature view, plus the event log."""
        return self.var_dir / "offline"

    @property
    def local_flink_conf_dir(self) -> Path:
        """The configuration `flywheel infra up` writes for the local Flink cluster (and `flink run` reads)."""
        return self.var_dir / "flink" / "conf"

    @property
    def checkpoint_uri(self) -> str:
        """Where the feature job's checkpoints go: durable storage every TaskManager and the JobManager
        can reach (a local path only serves a one-machine cluster)."""
        return _storage_uri(self.features.checkpoint_dir, self.var_dir / "flink" / "checkpoints")

    @property
    def savepoint_uri(self) -> str:
        return _storage_uri(self.features.savepoint_dir, self.var_dir / "flink" / "savepoints")

    @property
    def secrets_file(self) -> Path:
        return self.var_dir / "secrets.env"


def _storage_uri(given: str | None, default: Path) -> str:
    """A URI as it is (s3://bucket/x, hdfs://..., file:///x); a path as a file URI, relative to the repo."""
    if given is None:
        return default.as_uri()
    if "://" in given:
        return given.rstrip("/")
    path = Path(given)
    return (path if path.is_absolute() else REPO_ROOT / path).as_uri()


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (blank lines and # comments skipped), as in var/secrets.env."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def _overlay(data: dict[str, Any], env: dict[str, str]) -> None:
    """Apply FLYWHEEL_SECTION__KEY=value onto the nested dict (values parsed as YAML scalars)."""
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name}: {part} is not a section of flywheel.yaml")
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read flywheel.yaml (or $FLYWHEEL_CONFIG), then var/secrets.env, then the environment."""
    env = dict(os.environ if env is None else env)
    config_path = Path(env.get(CONFIG_ENV, REPO_ROOT / "flywheel.yaml"))
    data = yaml.safe_load(config_path.read_text())
    var_dir = Path(env.get(f"{ENV_PREFIX}VAR_DIR", data.get("var_dir", "var")))
    if not var_dir.is_absolute():
        var_dir = REPO_ROOT / var_dir
    _overlay(data, read_env_file(var_dir / "secrets.env"))
    _overlay(data, env)
    return Settings.model_validate(data)


@cache
def settings() -> Settings:
    """Process-wide settings (tests and CLIs that change the environment call load_settings)."""
    return load_settings()
