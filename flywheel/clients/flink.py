"""`flywheel flink submit | list | stop | resume`: the feature job on a Flink cluster.

Submission goes through Flink's own `flink run` (the client in the apache-flink wheel) against the
REST endpoint in settings, so the same commands drive the local standalone cluster or a remote one.
Stop takes a savepoint (REST API) and resume starts from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from flywheel.errors import FlywheelError
from flywheel.polling import wait_until
from flywheel.settings import REPO_ROOT, Settings, is_loopback


class FlinkError(FlywheelError):
    pass


def rest(cfg: Settings, method: str, path: str, timeout_s: float = 10, **kwargs: Any) -> Any:
    """A call to Flink's REST API, its JSON answer; an unreachable cluster or an unknown job is a FlinkError
    that says what to do."""
    url = f"{cfg.flink.rest_url}{path}"
    try:
        r = requests.request(method, url, timeout=timeout_s, **kwargs)
    except requests.ConnectionError as exc:
        # Chained, not `from None`: that would also hide an error this call's caller was handling.
        raise FlinkError(
            f"Flink's REST API at {cfg.flink.rest_url} does not answer: start the cluster "
            "(`flywheel infra up -s flink`) or point FLYWHEEL_FLINK__REST_URL at yours"
        ) from exc
    if r.status_code == 404 and "/jobs/" in path:
        raise FlinkError(f"Flink knows no such job ({path}): `flywheel flink list` shows the jobs")
    if not r.ok:
        raise FlinkError(f"Flink answered {r.status_code} to {method} {path}: {r.text[:500]}")
    return r.json() if r.content else None


def _flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


def submit(cfg: Settings, job_args: list[str], savepoint: str | None = None, pyexec: str | None = None) -> str:
    """Submit flink_jobs/features.py detached; returns the job id. Python runs only here, in the client
    that declares the job: every operator is Java, so the cluster needs the jars (shipped with the job),
    not Flywheel's Python. `pyexec`: the interpreter a TaskManager would start for Python operators."""
    env = {**os.environ, "FLYWHEEL_VAR_DIR": str(cfg.var_dir), "PYTHONPATH": str(REPO_ROOT)}
    if is_loopback(cfg.flink.host) and cfg.local_flink_conf_dir.exists():
        env["FLINK_CONF_DIR"] = str(cfg.local_flink_conf_dir)
    cmd = [
        "bash",
        str(_flink_home() / "bin" / "flink"),
        "run",
        "--detached",
        "-m",
        f"{cfg.flink.host}:{cfg.flink.rest_port}",
        "-pyclientexec",
        sys.executable,
    ]
    if pyexec:
        cmd += ["-pyexec", pyexec]
    if savepoint:
        cmd += ["--fromSavepoint", savepoint]
    cmd += ["--python", str(REPO_ROOT / "flink_jobs" / "features.py"), *job_args]
    before = {j["jid"] for j in list_jobs(cfg)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise FlinkError(f"flink run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if "JobID" in line:
            return line.split()[-1]
    new = [j["jid"] for j in list_jobs(cfg) if j["jid"] not in before]
    if len(new) == 1:
        return new[0]
    raise FlinkError(f"submitted, but could not tell the job id:\n{proc.stdout[-2000:]}")


def list_jobs(cfg: Settings) -> list[dict]:
    return rest(cfg, "GET", "/jobs/overview")["jobs"]


def job(cfg: Settings, job_id: str) -> dict:
    return rest(cfg, "GET", f"/jobs/{job_id}")


def checkpoints(cfg: Settings, job_id: str) -> dict:
    """Flink's checkpoint statistics: counts, and under latest the completed and the restored one."""
    return rest(cfg, "GET", f"/jobs/{job_id}/checkpoints")


def completed_checkpoints(cfg: Settings, job_id: str) -> int:
    return int(checkpoints(cfg, job_id)["counts"]["completed"])


def wait_state(cfg: Settings, job_id: str, states: set[str], timeout_s: float = 300) -> str:
    def reached() -> str | None:
        state = job(cfg, job_id)["state"]
        return state if state in states else None

    return wait_until(reached, timeout_s, f"job {job_id} reaching {sorted(states)}", interval_s=1, error=FlinkError)


def cancel(cfg: Settings, job_id: str, timeout_s: float = 120) -> None:
    """Cancel a job (no savepoint) and wait until it is gone."""
    rest(cfg, "PATCH", f"/jobs/{job_id}", params={"mode": "cancel"})
    wait_state(cfg, job_id, {"CANCELED", "FINISHED", "FAILED"}, timeout_s)


def stop_with_savepoint(cfg: Settings, job_id: str, timeout_s: float = 300) -> str:
    """Stop the job with a savepoint; returns the savepoint path."""
    target = cfg.savepoint_uri
    trigger = rest(cfg, "POST", f"/jobs/{job_id}/stop", 30, json={"targetDirectory": target, "drain": False})[
        "request-id"
    ]

    def location() -> str | None:
        st = rest(cfg, "GET", f"/jobs/{job_id}/savepoints/{trigger}")
        if st["status"]["id"] != "COMPLETED":
            return None
        op = st["operation"]
        if "failure-cause" in op:
            raise FlinkError(f"savepoint failed: {op['failure-cause'].get('stack-trace', '')[:2000]}")
        return op["location"]

    return wait_until(location, timeout_s, f"savepoint of {job_id}", interval_s=1, error=FlinkError)


def latest_restore_point(cfg: Settings) -> str | None:
    """The newest savepoint or retained checkpoint of the feature job (a folder holding _metadata), in
    the configured storage: a local path, or a URI pyarrow can list (s3://, gs://, hdfs://)."""
    from pyarrow import fs

    found: list[tuple] = []
    for uri, prefix in ((cfg.savepoint_uri, "savepoint-"), (cfg.checkpoint_uri, "chk-")):
        store, root = fs.FileSystem.from_uri(uri)
        try:
            infos = store.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError as e:
            raise FlinkError(f"cannot list {uri} to find a restore point: {e}") from e
        # pyarrow paths drop the URI's scheme (and an hdfs:// authority): put them back for `flink run`.
        scheme = "" if isinstance(store, fs.LocalFileSystem) else uri[: len(uri) - len(root)]
        for info in infos:
            folder = info.path.rsplit("/", 1)[0]
            if info.base_name == "_metadata" and folder.rsplit("/", 1)[-1].startswith(prefix):
                found.append((info.mtime, scheme + folder))
    return max(found)[1] if found else None
