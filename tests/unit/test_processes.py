from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from flywheel.stack.processes import InfraError, ManagedProcess, port_open, require_free_port


def test_start_and_stop_by_pid_file(tmp_path):
    mp = ManagedProcess("sleeper", tmp_path / "run")
    pid = mp.start(
        [sys.executable, "-c", "import time; time.sleep(60)", "flywheel-test-marker"],
        tmp_path / "log" / "sleeper.log",
        marker="flywheel-test-marker",
    )
    assert mp.pid() == pid
    assert mp.stop(timeout_s=5) is True
    assert mp.pid() is None and not mp.pid_file.exists()


def test_a_process_is_recognised_before_its_command_line_shows_the_marker(tmp_path):
    """A wrapper that execs the real program later (Flink's scripts, Redis renaming its title): pid() must not
    call a just-started process down, whatever its command line says yet."""
    mp = ManagedProcess("wrapped", tmp_path / "run")
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "late-marker"]
    script = f"import os, sys, time; time.sleep(1.5); os.execv(sys.executable, {argv!r})"
    pid = mp.start([sys.executable, "-c", script], tmp_path / "wrapped.log", marker="late-marker")
    try:
        assert mp.pid() == pid  # before the exec: the marker is not in the command line yet
        time.sleep(2.0)
        assert b"late-marker" in open(f"/proc/{pid}/cmdline", "rb").read()
        assert mp.pid() == pid  # and after it
    finally:
        assert mp.stop(timeout_s=5) is True
    assert mp.pid() is None


@pytest.mark.parametrize(
    "record",
    [
        {"marker": "flywheel-test-marker", "started": "1"},  # same PID and marker, another start time
        {"marker": "kafka.Kafka"},  # a PID file without a start time: the marker decides
    ],
    ids=["start-time", "marker"],
)
def test_never_signals_a_process_it_did_not_start(tmp_path, record):
    """A recycled PID is left alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "flywheel-test-marker"])
    try:
        mp = ManagedProcess("ghost", tmp_path)
        mp.pid_file.write_text(json.dumps({"pid": other.pid, "argv": [], **record}))
        assert mp.pid() is None
        assert mp.stop(timeout_s=1) is False
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_port_open_on_a_closed_port():
    assert port_open("127.0.0.1", 1) is False


def test_a_port_still_held_by_a_dying_process_of_ours_is_waited_for_and_anyone_elses_is_refused(tmp_path):
    """A SIGKILLed JVM keeps its listening sockets while the kernel unmaps its heap: starting its successor
    at once found the port taken. Here the holder is a process whose leader has died and whose last member
    closes the port 1.5 s later."""
    script = (
        "import os, socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "if os.fork() == 0:\n    time.sleep(1.5); sys.exit(0)\n"  # the last member, in the same group
        "os._exit(0)\n"  # the leader dies at once
    )
    mp = ManagedProcess("dying", tmp_path / "run")
    log = tmp_path / "dying.log"
    mp.start([sys.executable, "-c", script], log, marker="dying")
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    port = int(log.read_text())
    time.sleep(0.3)
    assert mp.pid() is None and mp.recorded() and port_open("127.0.0.1", port)
    with pytest.raises(InfraError, match="already taken"):
        require_free_port("svc", "127.0.0.1", port, "SVC_PORT")  # no grace: someone else's port
    require_free_port("svc", "127.0.0.1", port, "SVC_PORT", grace_s=20)  # ours, dying: released in time
    assert not port_open("127.0.0.1", port)


def test_a_port_held_past_the_grace_fails_naming_the_fix():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InfraError, match=f"port {port} on 127.0.0.1 is still taken 0.5 s .*SVC_PORT"):
            require_free_port("svc", "127.0.0.1", port, "SVC_PORT", grace_s=0.5)
