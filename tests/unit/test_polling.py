"""wait_until returns the first truthy result, retries only the errors it is told to, and fails with the
error type and message the caller chose."""

from __future__ import annotations

import pytest

from flywheel.errors import FlywheelError
from flywheel.polling import wait_until


class Late(FlywheelError):
    pass


def test_returns_the_first_truthy_result():
    answers = iter([None, 0, "", "done"])
    assert wait_until(lambda: next(answers), 5, "answer", interval_s=0.01) == "done"


def test_retries_the_listed_errors_and_raises_the_others():
    calls = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return True

    assert wait_until(flaky, 5, "flaky", interval_s=0.01, retry_on=(ConnectionError,)) is True
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], 5, "broken", interval_s=0.01, retry_on=(ConnectionError,))


def test_times_out_with_the_callers_error_and_what_did_not_happen(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text("line 1\nboom\n")
    with pytest.raises(Late, match=r"the thing: not done after 0s\.\nLast lines of .*svc\.log:\nline 1\nboom"):
        wait_until(lambda: False, 0.05, "the thing", interval_s=0.01, log_file=log, error=Late)


def test_a_dead_process_fails_at_once():
    with pytest.raises(FlywheelError, match="the process exited during start-up"):
        wait_until(lambda: False, 60, "svc", interval_s=0.01, alive=lambda: False)
