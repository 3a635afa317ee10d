"""The four services of the local stack, each a real process on loopback with state under var/.

Every service knows how to start itself, how to tell it is healthy, and where its log is. A service
whose configured host is not loopback is remote: we never start it, we only check it answers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from flywheel.clients.kafka import broker_ready, ensure_topics
from flywheel.settings import REPO_ROOT, Settings, is_loopback, read_env_file
from flywheel.stack.processes import (
    InfraError,
    ManagedProcess,
    port_open,
    require_free_port,
    wait_healthy,
)


@dataclass
class Status:
    name: str
    url: str
    healthy: bool
    managed: bool  # started by us (local) rather than remote
    pid: int | None
    detail: str = ""


def require_java() -> str:
    java = shutil.which(
        "java", path=os.path.join(os.environ.get("JAVA_HOME", ""), "bin") + os.pathsep + os.environ.get("PATH", "")
    )
    if not java:
        raise InfraError("Java 17+ not found: install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME.")
    return java


def venv_bin(name: str) -> str:
    """A console script of this environment (the one running flywheel), not whatever is on PATH."""
    return str(Path(sys.executable).parent / name)


class Service(ABC):
    name: str
    health_timeout_s: float = 90.0

    def __init__(self, cfg: Settings):
        self.cfg = cfg
        self.dir = cfg.var_dir / self.name
        self.log_file = cfg.var_dir / "log" / f"{self.name}.log"
        self.proc = ManagedProcess(self.name, cfg.var_dir / "run")

    @property
    @abstractmethod
    def host(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def url(self) -> str: ...

    @property
    def env_hint(self) -> str:
        return f"FLYWHEEL_{self.name.upper()}__..."

    @property
    def local(self) -> bool:
        return is_loopback(self.host)

    @abstractmethod
    def healthy(self) -> bool: ...

    @abstractmethod
    def _launch(self) -> None:
        """Write config and spawn the process(es)."""

    def after_start(self) -> None:  # noqa: B027 - optional hook, most services need nothing
        """Hook for work that needs the service up (topics, ...)."""

    def up(self) -> str:
        if not self.local:
            wait_healthy(self.healthy, 30, f"{self.name} (remote, {self.url})")
            self.after_start()
            return "remote, healthy"
        if self.proc.pid() is not None:
            wait_healthy(self.healthy, self.health_timeout_s, self.name, self.log_file, self._alive)
            self.after_start()
            return "already running"
        require_free_port(self.name, self.host, self.port, self.env_hint, self.exit_grace_s())
        self.dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        wait_healthy(self.healthy, self.health_timeout_s, self.name, self.log_file, self._alive)
        self.after_start()
        return "started"

    def _alive(self) -> bool:
        return self.proc.spawned_alive()

    def exit_grace_s(self) -> float:
        """How long a port may stay taken before start-up gives up: a crashed process of ours (its PID file
        is left) may still be exiting; a port taken by anything else fails at once."""
        return 30.0 if self.proc.recorded() else 0.0

    def down(self) -> bool:
        return self.proc.stop() if self.local else False

    def status(self) -> Status:
        detail = ""
        try:
            ok = self.healthy()
        except Exception as exc:  # noqa: BLE001 - status reports, it does not raise
            ok = False
            detail = (
                f"nothing answers on {self.host}:{self.port}"
                if not port_open(self.host, self.port)
                else f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            )
        return Status(self.name, self.url, ok, self.local, self.proc.pid(), detail)


class Kafka(Service):
    """Single-node Kafka 4.x in KRaft mode (broker + controller in one JVM). With `kafka.security_protocol:
    SASL_PLAINTEXT` its client listener takes only SCRAM-authenticated clients; the user (`kafka.username`,
    `kafka.password`) is created when the storage is formatted."""

    name = "kafka"

    @property
    def host(self) -> str:
        return self.cfg.kafka.host

    @property
    def port(self) -> int:
        return self.cfg.kafka.port

    @property
    def url(self) -> str:
        return f"kafka://{self.cfg.kafka.bootstrap_servers}"

    @property
    def env_hint(self) -> str:
        return "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS and FLYWHEEL_KAFKA__CONTROLLER_PORT"

    def healthy(self) -> bool:
        return port_open(self.host, self.port) and broker_ready(self.cfg.kafka)

    def classpath(self) -> str:
        jars = self.cfg.build_dir / "jvm" / "kafka"
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise InfraError(f"Kafka jars missing in {jars}: run `make setup` (fetches them from Maven Central).")
        return f"{jars}/*"

    def _launch(self) -> None:
        java = require_java()
        classpath = self.classpath()
        k = self.cfg.kafka
        require_free_port("kafka controller", self.host, k.controller_port, self.env_hint, self.exit_grace_s())
        if k.tls:
            raise InfraError(
                f"kafka.security_protocol {k.security_protocol}: the local broker speaks PLAINTEXT or SASL_PLAINTEXT; "
                "TLS needs a broker of your own (FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS, FLYWHEEL_KAFKA__SSL_CA_LOCATION)"
            )
        data = self.dir / "data"
        scram_user = self.dir / "scram-user"  # who the storage was formatted with
        if k.sasl and (data / "meta.properties").exists() and not scram_user.exists():
            raise InfraError(
                f"the local Kafka storage in {data} was formatted without SCRAM users, so a SASL broker would refuse "
                "everyone: `flywheel infra down --purge` (its topics go) and `flywheel infra up` again"
            )
        listener = k.security_protocol
        props = self.dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={self.host}:{k.controller_port}",
                    f"listeners={listener}://{self.host}:{self.port},CONTROLLER://{self.host}:{k.controller_port}",
                    f"advertised.listeners={listener}://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    f"inter.broker.listener.name={listener}",
                    f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
                    *self._sasl_properties(),
                    f"log.dirs={data}",
                    f"num.partitions={k.partitions}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # Flink's exactly-once Kafka sink uses transactions that may stay open up to 1 h.
                    "transaction.max.timeout.ms=3600000",
                    "log.retention.hours=-1",
                    "auto.create.topics.enable=false",
                ]
            )
            + "\n"
        )
        props.chmod(0o600)  # with SASL it holds the broker's own password
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(
            "rootLogger.level=INFO\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
            "appender.stdout.layout.type=PatternLayout\nappender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=WARN\n"
            "logger.apache.name=org.apache.kafka\nlogger.apache.level=WARN\n"
        )
        jvm = [java, f"-Xmx{k.heap}", f"-Xms{k.heap}", f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
        if not (data / "meta.properties").exists():
            scram = []
            if k.sasl:
                user, password = k.credentials()
                scram = ["--add-scram", f"{k.sasl_mechanism}=[name={user},password={password}]"]
            cluster_id = str(uuid.uuid4()).replace("-", "")[:22]
            fmt = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                                  "-c", str(props), *scram], capture_output=True, text=True)  # fmt: skip
            if fmt.returncode != 0:
                raise InfraError(f"kafka: formatting KRaft storage failed:\n{fmt.stdout}\n{fmt.stderr}")
            if k.sasl:
                scram_user.write_text(k.credentials()[0] + "\n")
        self.proc.start([*jvm, "kafka.Kafka", str(props)], self.log_file, marker=str(props))

    def _sasl_properties(self) -> list[str]:
        """SCRAM on the client listener; the broker authenticates to itself as the same user."""
        k = self.cfg.kafka
        if not k.sasl:
            return []
        mechanism = k.sasl_mechanism
        return [
            f"sasl.enabled.mechanisms={mechanism}",
            f"sasl.mechanism.inter.broker.protocol={mechanism}",
            # The broker's own login: the line its Java clients use (kafka-clients not relocated here).
            f"listener.name.{k.security_protocol.lower()}.{mechanism.lower()}.sasl.jaas.config="
            + k.java_config(shaded=False)["sasl.jaas.config"],
        ]

    def after_start(self) -> None:
        ensure_topics(self.cfg.kafka)


class Redis(Service):
    name = "redis"
    health_timeout_s = 30.0

    @property
    def host(self) -> str:
        return self.cfg.redis.host

    @property
    def port(self) -> int:
        return self.cfg.redis.port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def env_hint(self) -> str:
        return "FLYWHEEL_REDIS__PORT"

    def client(self) -> redis.Redis:
        pw = self.cfg.redis.password.get_secret_value() if self.cfg.redis.password else None
        return redis.Redis(host=self.host, port=self.port, password=pw, ssl=self.cfg.redis.ssl, socket_timeout=2)

    def healthy(self) -> bool:
        return bool(self.client().ping())

    def _launch(self) -> None:
        server = shutil.which("redis-server")
        if not server:
            raise InfraError("redis-server not found: run `make setup` (installs Debian's redis-server).")
        if not self.cfg.redis.password:
            raise InfraError(
                "No Redis password: set FLYWHEEL_REDIS__PASSWORD (or let `flywheel infra up` generate var/secrets.env)."
            )
        conf = self.dir / "redis.conf"
        conf.write_text(
            f"bind {self.host}\nport {self.port}\ndir {self.dir}\ndaemonize no\nappendonly yes\n"
            f"save 60 1000\nrequirepass {self.cfg.redis.password.get_secret_value()}\n"
            "protected-mode yes\n"
        )
        conf.chmod(0o600)
        # redis-server rewrites its process title to "redis-server host:port".
        self.proc.start([server, str(conf)], self.log_file, marker=f"redis-server {self.host}:{self.port}")


class Flink(Service):
    """Flink standalone session cluster from the apache-flink wheel: one JobManager and `flink.taskmanagers`
    TaskManagers, each with a working directory, temporary directories and a log of its own: they share
    only what a multi-node cluster shares (the checkpoint and savepoint storage, the offline store URI)."""

    name = "flink"
    health_timeout_s = 120.0

    def __init__(self, cfg: Settings):
        super().__init__(cfg)
        n = cfg.flink.taskmanagers
        # The first keeps the name of a single TaskManager's files (a stack started before stays stoppable).
        names = ["flink-taskmanager", *(f"flink-taskmanager-{i}" for i in range(1, n))]
        self.tm_procs = [ManagedProcess(name, cfg.var_dir / "run") for name in names]
        self.tm_logs = [cfg.var_dir / "log" / f"{name}.log" for name in names]

    @property
    def host(self) -> str:
        return self.cfg.flink.host

    @property
    def port(self) -> int:
        return self.cfg.flink.rest_port

    @property
    def url(self) -> str:
        return self.cfg.flink.rest_url

    @property
    def env_hint(self) -> str:
        return "FLYWHEEL_FLINK__REST_URL (and FLYWHEEL_FLINK__RPC_PORT)"

    @property
    def conf_dir(self) -> Path:
        return self.cfg.local_flink_conf_dir

    def overview(self) -> dict:
        return requests.get(f"{self.url}/overview", timeout=2).json()

    def healthy(self) -> bool:
        ov = self.overview()
        n = self.cfg.flink.taskmanagers
        return ov.get("taskmanagers", 0) >= n and ov.get("slots-total", 0) >= n * self.cfg.flink.taskmanager_slots

    def flink_home(self) -> Path:
        import pyflink

        return Path(pyflink.__file__).parent

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LOG_DIR=str(self.cfg.var_dir / "log"),
            FLINK_HOME=str(self.flink_home()),
            FLINK_LIB_DIR=str(self.dir / "lib"),
        )
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def write_config(self) -> None:
        f = self.cfg.flink
        home = self.flink_home()
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for name in ("log4j-console.properties", "log4j-cli.properties", "log4j.properties", "logback-console.xml"):
            shutil.copy(home / "conf" / name, self.conf_dir / name)
        # The wheel's lib/ plus flink-python (in opt/): the JobManager needs it to accept PyFlink
        # DataStream jobs (ExternalPythonProcessOperator), as a Flink distribution's docs prescribe.
        lib = self.dir / "lib"
        shutil.rmtree(lib, ignore_errors=True)
        lib.mkdir(parents=True)
        for jar in [*(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python-*.jar")]:
            (lib / jar.name).symlink_to(jar)
        shipped = (home / "conf" / "config.yaml").read_text()
        java_opts = shipped.split("all:", 1)[1].splitlines()[0].strip()
        config = {
            "env.java.opts.all": java_opts,
            "jobmanager.bind-host": self.host,
            "jobmanager.rpc.address": self.host,
            "jobmanager.rpc.port": f.rpc_port,
            "jobmanager.memory.process.size": f.jobmanager_memory,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.bind-host": self.host,
            "taskmanager.host": self.host,
            "taskmanager.numberOfTaskSlots": f.taskmanager_slots,
            "taskmanager.memory.process.size": f.taskmanager_memory,
            # The feature job's state lives on the heap (hashmap backend), and so do the open Parquet
            # writers: give the heap more than the 0.4 managed-memory default leaves.
            "taskmanager.memory.managed.fraction": 0.25,
            "parallelism.default": f.parallelism,
            "rest.address": self.host,
            "rest.bind-address": self.host,
            "rest.port": self.port,
            "blob.server.port": "0",
            "execution.checkpointing.dir": self.cfg.checkpoint_uri,
            "execution.checkpointing.savepoint-dir": self.cfg.savepoint_uri,
            "restart-strategy.type": "exponential-delay",
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
        }
        # Flat keys are valid YAML for Flink's config.yaml parser.
        (self.conf_dir / "config.yaml").write_text(
            "".join(f"{k}: {json.dumps(v) if isinstance(v, str) else v}\n" for k, v in config.items())
        )
        (self.conf_dir / "masters").write_text(f"{self.host}:{self.port}\n")
        (self.conf_dir / "workers").write_text(f"{self.host}\n")

    def _launch(self) -> None:
        require_java()
        require_free_port("flink rpc", self.host, self.cfg.flink.rpc_port, self.env_hint, self.exit_grace_s())
        self.write_config()
        bin_dir = self.flink_home() / "bin"
        for script in bin_dir.glob("*.sh"):
            script.chmod(0o755)
        self.proc.start(
            ["bash", str(bin_dir / "jobmanager.sh"), "start-foreground"],
            self.log_file,
            marker="StandaloneSessionClusterEntrypoint",
            env=self.env(),
        )
        for i, tm in enumerate(self.tm_procs):
            # After a JobManager crash the TaskManagers still run: they register with the new one by themselves.
            if tm.pid() is None:
                self.start_taskmanager(i)

    def taskmanager_dir(self, i: int) -> Path:
        return self.dir / f"taskmanager-{i}"

    def taskmanager_options(self, i: int) -> list[str]:
        """The options that set TaskManager `i` apart from the others on this host."""
        work = self.taskmanager_dir(i)
        return [f"-D{k}={v}" for k, v in {
            "taskmanager.resource-id": f"taskmanager-{i}",  # its name in the web UI and the REST API
            "process.taskmanager.working-dir": work / "work",  # local state and blobs
            "io.tmp.dirs": work / "tmp",  # spill files and the RocksDB backend's local directory
        }.items()]  # fmt: skip

    def start_taskmanager(self, i: int = 0) -> int:
        """Also used by fault-tolerance tests to replace a killed TaskManager."""
        for sub in ("work", "tmp"):
            (self.taskmanager_dir(i) / sub).mkdir(parents=True, exist_ok=True)
        bin_dir = self.flink_home() / "bin"
        return self.tm_procs[i].start(
            ["bash", str(bin_dir / "taskmanager.sh"), "start-foreground", *self.taskmanager_options(i)],
            self.tm_logs[i],
            marker="TaskManagerRunner",
            env=self.env(),
        )

    def _alive(self) -> bool:
        return self.proc.spawned_alive() and all(tm.spawned_alive() for tm in self.tm_procs)

    def up(self) -> str:
        missing = [i for i, tm in enumerate(self.tm_procs) if tm.pid() is None]
        if not (self.local and self.proc.pid() is not None and missing):
            return super().up()
        for i in missing:  # the JobManager runs: start the TaskManagers that do not, before the health check
            self.start_taskmanager(i)
        wait_healthy(self.healthy, self.health_timeout_s, "flink taskmanager", self.tm_logs[missing[0]], self._alive)
        self.after_start()
        return "taskmanager restarted"

    def down(self) -> bool:
        if not self.local:
            return False
        tms = [tm.stop() for tm in self.tm_procs]
        jm = self.proc.stop()
        return any(tms) or jm

    def status(self) -> Status:
        st = super().status()
        if st.healthy:
            ov = self.overview()
            st.detail = (
                f"{ov['taskmanagers']} taskmanager(s), {ov['slots-available']}/{ov['slots-total']} "
                f"slots free, {ov['jobs-running']} job(s) running"
            )
        return st


class Airflow(Service):
    """Airflow 3 in standalone mode (api-server, scheduler, dag-processor, triggerer), auth on."""

    name = "airflow"
    health_timeout_s = 240.0

    @property
    def host(self) -> str:
        return self.cfg.airflow.host

    @property
    def port(self) -> int:
        return self.cfg.airflow.port

    @property
    def url(self) -> str:
        return self.cfg.airflow.url

    @property
    def env_hint(self) -> str:
        return "FLYWHEEL_AIRFLOW__URL"

    def healthy(self) -> bool:
        h = requests.get(f"{self.url}/api/v2/monitor/health", timeout=3).json()
        return all(h.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler"))

    def env(self) -> dict[str, str]:
        a = self.cfg.airflow
        if not a.password:
            raise InfraError(
                "No Airflow password: set FLYWHEEL_AIRFLOW__PASSWORD (or let `flywheel infra up` "
                "generate var/secrets.env)."
            )
        local_secrets = read_env_file(self.cfg.secrets_file)
        env = dict(os.environ)
        env.update(
            AIRFLOW_HOME=str(self.dir),
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{a.username}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self.dir / "passwords.json"),
            AIRFLOW__API__HOST=self.host,
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(a.log_server_port),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(a.log_server_port + 1),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET=env.get(
                "AIRFLOW__API_AUTH__JWT_SECRET", local_secrets.get("AIRFLOW_JWT_SECRET", "")
            ),
            AIRFLOW__API__SECRET_KEY=env.get(
                "AIRFLOW__API__SECRET_KEY", local_secrets.get("AIRFLOW_API_SECRET_KEY", "")
            ),
            PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
        )
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _launch(self) -> None:
        env = self.env()
        pw_file = self.dir / "passwords.json"
        pw_file.write_text(json.dumps({self.cfg.airflow.username: self.cfg.airflow.password_value()}))
        pw_file.chmod(0o600)
        self.proc.start([venv_bin("airflow"), "standalone"], self.log_file, marker="standalone", env=env, cwd=self.dir)


SERVICES: dict[str, type[Service]] = {"kafka": Kafka, "redis": Redis, "flink": Flink, "airflow": Airflow}


def ensure_local_secrets(cfg: Settings) -> bool:
    """Generate local-only secrets into var/secrets.env (0600) for whatever the environment leaves unset.

    Returns True when the file was (re)written, so callers reload settings.
    """
    current = read_env_file(cfg.secrets_file)
    local_sasl = cfg.kafka.sasl and is_loopback(cfg.kafka.host)
    wanted = {
        "FLYWHEEL_REDIS__PASSWORD": None if cfg.redis.password else secrets.token_urlsafe(18),
        "FLYWHEEL_AIRFLOW__PASSWORD": None if cfg.airflow.password else secrets.token_urlsafe(12),
        "FLYWHEEL_SERVING__TOKEN": None if cfg.serving.token else secrets.token_urlsafe(18),
        # A local SASL broker's user (a remote broker's come from the environment).
        "FLYWHEEL_KAFKA__USERNAME": "flywheel" if local_sasl and not cfg.kafka.username else None,
        "FLYWHEEL_KAFKA__PASSWORD": secrets.token_urlsafe(18) if local_sasl and not cfg.kafka.password else None,
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
    }
    added = {k: v for k, v in wanted.items() if v is not None and k not in current}
    if not added:
        return False
    cfg.var_dir.mkdir(parents=True, exist_ok=True)
    current.update(added)
    path = cfg.secrets_file
    path.write_text(
        "# Local secrets generated by `flywheel infra up`; never commit. Override by environment.\n"
        + "".join(f"{k}={v}\n" for k, v in current.items())
    )
    path.chmod(0o600)
    return True
