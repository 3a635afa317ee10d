"""Feast, configured from Flywheel's settings: the repo in feature_repo/, secrets from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flywheel.settings import REPO_ROOT, Settings

FEATURE_REPO = REPO_ROOT / "feature_repo"


def feast_env(cfg: Settings) -> dict[str, str]:
    """The variables feature_store.yaml reads (see `flywheel env`)."""
    return {"FLYWHEEL_VAR_DIR": str(cfg.var_dir), "FEAST_REDIS_CONNECTION_STRING": cfg.redis.connection_string}


def store(cfg: Settings):
    """A FeatureStore on feature_repo/, exactly what `FeatureStore(repo_path="feature_repo")` gives a user."""
    from feast import FeatureStore

    os.environ.update(feast_env(cfg))
    (cfg.var_dir / "feast").mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(FEATURE_REPO))


def feast_cli(cfg: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the `feast` CLI on our repo with the environment it needs."""
    (cfg.var_dir / "feast").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **feast_env(cfg)}
    feast = str(Path(sys.executable).parent / "feast")
    proc = subprocess.run([feast, "-c", str(FEATURE_REPO), *args], env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"feast {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def apply(cfg: Settings) -> str:
    return feast_cli(cfg, "apply").stdout
