"""What every Flywheel Flink job shares: the connector jars and where the job runs.

Jobs run either embedded (a local mini-cluster inside this Python process) or on a Flink cluster
(`execution.target: remote` against the REST endpoint in settings), with the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

from flywheel.errors import FlywheelError
from flywheel.settings import REPO_ROOT, Settings

EMBEDDED_LOG4J = REPO_ROOT / "infra" / "flink" / "log4j-embedded.properties"


class MissingJar(FlywheelError):
    pass


def embedded_logs_to_file(cfg: Settings) -> None:
    """Before PyFlink starts its JVM: that JVM's log4j writes to var/log/ and only errors to the console
    (Flink's default prints Hadoop's INFO lines, one per Parquet file, among a command's output)."""
    log_dir = cfg.var_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LOG4J_PROPERTIES", str(EMBEDDED_LOG4J))
    os.environ.setdefault("FLINK_LOG_DIR", str(log_dir))


# Flywheel's SQL functions (flink_jobs/jvm, built by `make setup`): name -> class.
FUNCTIONS = {"JSON_FIELDS": "io.flywheel.flink.JsonFields", "JSON_TEXT": "io.flywheel.flink.JsonText"}


def connector_jars(cfg: Settings) -> list[Path]:
    """The Kafka SQL connector, flink-sql-parquet and the shaded Hadoop client it needs, the Redis client
    (Jedis and its dependencies), fetched by `make setup` (versions: infra/jvm/pom.xml), and Flywheel's
    own Java code (flink_jobs/jvm)."""
    folder = cfg.build_dir / "jvm" / "flink"
    jars = []
    for prefix in (
        "flink-sql-connector-kafka-",
        "flink-sql-parquet-",
        "hadoop-client-api-",
        "hadoop-client-runtime-",
        "jedis-",
        "commons-pool2-",
        "gson-",
        "json-",
        "redis-authx-core-",
        "flywheel-functions",
    ):
        found = sorted(folder.glob(f"{prefix}*.jar"))
        if not found:
            raise MissingJar(f"{prefix}*.jar not in {folder}: run `make setup` (fetches or builds it).")
        jars.append(found[-1])
    return jars


def table_env(cfg: Settings, streaming: bool = True, remote: bool = False, parallelism: int | None = None):
    """A TableEnvironment with the connector jars, embedded or pointed at the configured cluster."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    embedded_logs_to_file(cfg)
    settings = EnvironmentSettings.in_streaming_mode() if streaming else EnvironmentSettings.in_batch_mode()
    t_env = TableEnvironment.create(settings)
    conf = t_env.get_config()
    conf.set("pipeline.jars", ";".join(p.as_uri() for p in connector_jars(cfg)))
    conf.set("parallelism.default", str(parallelism or cfg.flink.parallelism))
    if remote:
        conf.set("execution.target", "remote")
        conf.set("rest.address", cfg.flink.host)
        conf.set("rest.port", str(cfg.flink.rest_port))
    return t_env


def kafka_security_options(cfg: Settings) -> dict[str, str]:
    """The Kafka connector's security properties (SASL, TLS) from `kafka.*`: its kafka-clients is shaded."""
    return {f"properties.{k}": v for k, v in cfg.kafka.java_config(shaded=True).items()}


def kafka_source_options(cfg: Settings, topic: str, group_id: str, bounded: bool = False) -> dict[str, str]:
    opts = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": cfg.kafka.bootstrap_servers,
        "properties.group.id": group_id,
        "scan.startup.mode": "earliest-offset",
        **kafka_security_options(cfg),
    }
    if bounded:
        opts["scan.bounded.mode"] = "latest-offset"
    return opts


def with_clause(options: dict[str, str]) -> str:
    return ",\n  ".join(f"'{k}' = '{_quoted(v)}'" for k, v in options.items())


def _quoted(value: str) -> str:
    """A value inside a SQL string literal (a password may hold a quote)."""
    return str(value).replace("'", "''")
