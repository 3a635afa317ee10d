"""Start, find and stop the processes `flywheel infra` owns, by PID file.

A PID file alone is not proof: PIDs get recycled. Each file also records the process's start time (from
/proc, fixed at fork), so `down` never signals a process it did not start, and a process is recognised from
the moment it is spawned: a wrapper script, or Redis renaming its process title, changes the command line
later. The marker (a string of the final command line) is only checked for PID files without a start time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flywheel import polling
from flywheel.errors import FlywheelError


class InfraError(FlywheelError):
    """A service could not be started or reached; the message says what to do about it."""


@dataclass(frozen=True)
class ManagedProcess:
    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    def _record(self) -> dict | None:
        try:
            return json.loads(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self) -> int | None:
        """The PID if the recorded process is alive and still the one we started."""
        rec = self._record()
        if not rec:
            return None
        pid = int(rec["pid"])
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            return None
        if "started" in rec:
            return pid if stat[STARTTIME] == rec["started"] else None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            return None
        return pid if rec["marker"] in cmdline else None

    def recorded(self) -> bool:
        """Whether a PID file is left: the process was started and not stopped (it may have died since)."""
        return self._record() is not None

    def spawned_alive(self) -> bool:
        """Liveness during start-up, when the command line may not show the marker yet (exec in flight)."""
        rec = self._record()
        return rec is not None and _alive(int(rec["pid"]))

    def start(
        self, argv: list[str], log_file: Path, marker: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Spawn in its own session (so `stop` can signal the whole process group) and record it."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        stat = _stat(proc.pid)
        record = {"pid": proc.pid, "marker": marker, "argv": argv[:3]}
        if stat is not None:
            record["started"] = stat[STARTTIME]
        self.pid_file.write_text(json.dumps(record))
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL what is left after the timeout; return once the whole
        group is gone (Airflow's and Flink's children included). Returns whether anything was running."""
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                _alive(pid)  # reaps the leader if it is our child
                if not _group_members(pid):
                    return True
                time.sleep(0.2)
        return True


STARTTIME = 19  # /proc/<pid>/stat field 22 (start time in clock ticks), counted from the state field


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may contain spaces): state, ppid, pgrp..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _group_members(pgid: int) -> list[int]:
    members = []
    for path in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(path.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(path.name))
    return members


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap if it was our child
    except ChildProcessError:
        pass
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_free_port(service: str, host: str, port: int, env_hint: str, grace_s: float = 0.0) -> None:
    """Raise unless the port is free, within `grace_s`: a process of ours that was just killed keeps its
    listening sockets until the kernel has finished its exit (a JVM's heap is unmapped first)."""
    deadline = time.monotonic() + grace_s
    while port_open(host, port):
        if time.monotonic() >= deadline:
            held = (
                f"is still taken {grace_s:g} s after flywheel's process there died"
                if grace_s
                else "is already taken by a process flywheel did not start"
            )
            raise InfraError(
                f"{service}: port {port} on {host} {held}. "
                f"Stop that process, or move {service} elsewhere with {env_hint}."
            )
        time.sleep(0.2)


def wait_healthy(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    log_file: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll a service's health check; any error while a service boots means "not yet"."""
    polling.wait_until(check, timeout_s, what, retry_on=(Exception,), alive=alive, log_file=log_file, error=InfraError)
