from __future__ import annotations

import json
import subprocess
import sys
import time

from flywheel.stack.processes import ManagedProcess, port_open


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


def test_never_signals_a_process_it_did_not_start(tmp_path):
    """A recycled PID (the marker no longer matches) is left alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mp = ManagedProcess("ghost", tmp_path)
        tmp_path.mkdir(exist_ok=True)
        mp.pid_file.write_text(json.dumps({"pid": other.pid, "marker": "kafka.Kafka", "argv": []}))
        assert mp.pid() is None
        assert mp.stop(timeout_s=1) is False
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_port_open_on_a_closed_port():
    assert port_open("127.0.0.1", 1) is False
