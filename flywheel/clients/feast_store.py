"""Feast, configured from Flywheel's settings: the repo in feature_repo/, secrets from the environment."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.settings import REPO_ROOT, Settings

if TYPE_CHECKING:  # feast takes seconds to import
    from feast import FeatureStore

FEATURE_REPO = REPO_ROOT / "feature_repo"
log = logging.getLogger(__name__)


def feast_env(cfg: Settings) -> dict[str, str]:
    """The variables feature_store.yaml reads (see `flywheel env`)."""
    return {"FLYWHEEL_VAR_DIR": str(cfg.var_dir), "FEAST_REDIS_CONNECTION_STRING": cfg.redis.connection_string}


def store(cfg: Settings) -> FeatureStore:
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
    """`feast apply`, always; records what it applied (see `ensure_applied`)."""
    out = feast_cli(cfg, "apply").stdout
    _stamp(cfg).write_text(f"{_definitions_digest(cfg)} {_registry_state(cfg)}")
    return out


def ensure_applied(cfg: Settings) -> bool:
    """`feast apply` unless the registry is the one the last apply wrote, from the same definitions and
    environment (a `feast apply` costs a process and seconds of imports). True if it applied."""
    stamp, registry = _stamp(cfg), _registry_state(cfg)
    if registry and stamp.exists() and stamp.read_text() == f"{_definitions_digest(cfg)} {registry}":
        log.info("feature_repo and the registry unchanged since the last apply: not applied again")
        return False
    log.info(apply(cfg))
    return True


def _stamp(cfg: Settings) -> Path:
    return cfg.var_dir / "feast" / "applied.stamp"


def _definitions_digest(cfg: Settings) -> str:
    """What an apply depends on: feature_repo's files and the variables feature_store.yaml reads."""
    h = hashlib.sha256()
    for f in sorted(FEATURE_REPO.glob("*.py")) + sorted(FEATURE_REPO.glob("*.yaml")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(json.dumps(sorted(feast_env(cfg).items())).encode())
    return h.hexdigest()


def _registry_state(cfg: Settings) -> str | None:
    """The registry file's size and modification time (another writer, an apply from other definitions or a
    materialization, changes them); None without one (none yet, or a SQL registry: always applied)."""
    try:
        st = (cfg.var_dir / "feast" / "registry.db").stat()
    except FileNotFoundError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def isolated_store(
    work_dir: Path, offline_dir: Path, offline_store: str = "duckdb", single_file: bool = False
) -> FeatureStore:
    """feature_repo's definitions over another offline folder, with their own registry and a SQLite
    online store: for tests and benchmarks that must compare against Feast without touching the stack.
    `offline_store` is "duckdb" (ours) or "file" (Feast's default); `single_file` reads <view>.parquet
    instead of the feature job's dt=/hr= layout."""
    import copy

    from feast import FeatureStore, FileSource, RepoConfig
    from feast.data_format import ParquetFormat

    from feature_repo import entities, feature_services, feature_views

    work_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project="flywheel",
        provider="local",
        registry=str(work_dir / "registry.db"),
        online_store={"type": "sqlite", "path": str(work_dir / "online.db")},
        offline_store={"type": offline_store},
        entity_key_serialization_version=3,
        repo_path=str(work_dir),
    )
    views = []
    for name, fv in feature_views.VIEWS.items():
        view = copy.deepcopy(fv)
        assert fv.batch_source is not None  # every view of feature_repo has a Parquet source
        view.batch_source = FileSource(
            name=fv.batch_source.name,
            path=str(
                offline_dir / f"{name}.parquet" if single_file else offline_dir / name / "dt=*" / "hr=*" / "part-*"
            ),
            file_format=ParquetFormat(),
            timestamp_field=fv.batch_source.timestamp_field,
        )
        views.append(view)
    fs = FeatureStore(config=config)
    fs.apply(
        [
            entities.user,
            entities.item,
            entities.item_category,
            *views,
            feature_views.user_recency,
            feature_views.item_trend,
            feature_services.ranker_v1,
        ]
    )
    return fs
