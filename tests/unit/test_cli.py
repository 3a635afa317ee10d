"""A user's mistake at the command line gets one line naming the fix and a non-zero exit: never a traceback,
never a silent success."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flywheel.cli import app

# (arguments, expected exit code, a fragment the message must contain)
BAD = [
    (["trainset", "build", "--start", "2019-12-01", "--end", "2019-11-24"], 2, "is not after --start"),
    (["trainset", "build", "--start", "notadate"], 2, "is not an ISO date or time"),
    (["trainset", "build", "--end", "2019-13-01"], 2, "is not an ISO date or time"),
    (["events", "simulate", "--events", "-5"], 2, "--events"),
    (["events", "simulate", "--events", "10", "--late-rate", "1.5"], 2, "--late-rate"),
    (["events", "simulate", "--drift-at", "2026-01-09", "--drift-until", "2026-01-08"], 2, "--drift-until"),
    (["events", "simulate", "--start", "yesterday"], 2, "is not an ISO date or time"),
    (["events", "replay-obd", "--policy", "nope"], 2, "'random', 'bts'"),
    (["events", "replay-obd", "--campaign", "kids"], 2, "'all', 'men', 'women'"),
    (["events", "replay-obd", "--speedup", "-1"], 2, "--speedup"),
    (["features", "run", "--parallelism", "0"], 2, "--parallelism"),
    (["train", "fit", "--trainset", "/nonexistent"], 2, "does not exist"),
    (["train", "fit", "--trainset", ".", "--mode", "partial"], 2, "'full', 'incremental'"),
    (["train", "validate", "--trainset", ".", "--reference", "/nonexistent"], 2, "does not exist"),
    (["registry", "promote", "v9999", "--reason", "test"], 1, "flywheel registry list"),
    (["registry", "show", "v9999"], 1, "flywheel registry list"),
    (["registry", "rollback", "--reason", "test"], 1, "no previous model"),
    (["train", "report"], 1, "no champion yet"),
    (["infra", "status", "-s", "postgres"], 1, "choose from"),
    (["bench", "everything"], 2, "'trainset', 'features'"),
    (["score", "--user", "u1", "--items", " , "], 2, "at least one item id"),
    (["trainset", "build"], 1, "run the feature job first"),
    (["serve"], 1, "FLYWHEEL_SERVING__TOKEN"),
    (["online", "report"], 1, "run the feature job first"),
]


@pytest.mark.parametrize(("args", "code", "fragment"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_arguments_get_one_clear_line_and_a_nonzero_exit(args, code, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path))  # an empty registry and event log
    monkeypatch.setenv("COLUMNS", "200")  # keep usage messages on one line
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == code, text
    assert fragment in text, text
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception


@pytest.mark.slow
def test_an_unknown_feature_service_names_the_known_ones(tmp_path):
    from flywheel.clients.feast_store import isolated_store
    from flywheel.errors import FlywheelError
    from training import trainset

    store = isolated_store(tmp_path / "feast", tmp_path / "offline")
    with pytest.raises(FlywheelError, match=r"no feature service 'ranker_v9'.*known: ranker_v1"):
        trainset.plan(store, "ranker_v9")


DOWN = [
    (["flink", "list"], {"FLYWHEEL_FLINK__REST_URL": "http://127.0.0.1:1"}, "flywheel infra up -s flink"),
    (["flink", "stop", "job-1"], {"FLYWHEEL_FLINK__REST_URL": "http://127.0.0.1:1"}, "FLYWHEEL_FLINK__REST_URL"),
    (["events", "count"], {"FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "flywheel infra up -s kafka"),
    (["score", "--user", "u1", "--items", "a,b"], {}, "no champion model yet"),
    (["serve"], {"FLYWHEEL_SERVING__TOKEN": "t", "FLYWHEEL_REDIS__PORT": "1"}, "flywheel infra up -s redis"),
]


@pytest.mark.slow  # the Kafka client waits out its metadata timeout
@pytest.mark.parametrize(("args", "env", "fragment"), DOWN, ids=[" ".join(a) for a, _, _ in DOWN])
def test_a_missing_service_or_model_is_one_line_naming_the_fix(args, env, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert fragment in text and "Traceback" not in result.output, text


def test_the_cli_shows_flywheels_info_logs_and_only_warnings_of_other_libraries(capsys):
    import logging

    from flywheel.cli._common import configure_logging

    configure_logging()
    logging.getLogger().setLevel(logging.INFO)  # as some libraries do when imported
    logging.getLogger("feast.infra.registry.registry").info("registry cache refreshed")
    logging.getLogger("feast.infra").warning("a third-party warning")
    logging.getLogger("training.pipeline").info("registered v0001")
    out = capsys.readouterr().out
    assert "registered v0001" in out and "a third-party warning" in out
    assert "registry cache refreshed" not in out
