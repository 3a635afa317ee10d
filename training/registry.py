"""A file-based model registry: immutable versions, two aliases (champion, previous), an audit log.

Layout under var/registry/:
  versions/<version>/model.pt        state_dict, loaded with torch.load(weights_only=True) after a sha256 check
  versions/<version>/metadata.json   mode, parent, data window, manifest hash, feature service, git SHA,
                                     metrics, validation results, artifact sha256, run key
  aliases.json                       {"champion": ..., "previous": ...}: both change in one atomic rename,
                                     so a crash mid-switch leaves either the old pair or the new pair
  audit.jsonl                        one line per decision (promoted, blocked, rejected, rolled back, kept)

A run key (e.g. "weekly:2026-01-12T00:00") makes registration idempotent: re-running an Airflow data
interval finds its version instead of adding a second one, and promoting the champion again is a no-op.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from flywheel.errors import FlywheelError
from flywheel.settings import REPO_ROOT

ALIASES = ("champion", "previous")


class RegistryError(FlywheelError):
    pass


@dataclass
class ModelVersion:
    version: str
    mode: str  # full | incremental
    parent_version: str | None
    data_window: dict[str, str]
    trainset_sha256: str
    feature_service: str
    feature_service_version: str
    model_config: dict
    metrics: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    run_key: str | None = None
    trainset_dir: str | None = None  # the champion's training set is the next run's drift reference
    code_sha: str = ""
    artifact_sha256: str = ""
    created_at: str = ""


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, text: str, before_commit: Callable[[], None] | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if before_commit:
            before_commit()  # tests inject a crash here
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Registry:
    def __init__(self, root: Path):
        self.root = root
        (root / "versions").mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        out = []
        for meta in sorted((self.root / "versions").glob("v*/metadata.json")):  # not a writer's .new-* folder
            out.append(ModelVersion(**json.loads(meta.read_text())))
        return out

    def get(self, version: str) -> ModelVersion:
        meta = self.root / "versions" / version / "metadata.json"
        if not meta.exists():
            raise RegistryError(f"no model version {version!r}; `flywheel registry list` shows the known ones")
        return ModelVersion(**json.loads(meta.read_text()))

    def aliases(self) -> dict[str, str | None]:
        path = self.root / "aliases.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        return {a: data.get(a) for a in ALIASES}

    def alias(self, name: str) -> ModelVersion | None:
        version = self.aliases()[name]
        return self.get(version) if version else None

    def find_run(self, run_key: str) -> ModelVersion | None:
        return next((v for v in self.versions() if v.run_key == run_key), None)

    def load_state(self, version: str) -> dict:
        """The weights, after checking they are the bytes that were registered."""
        mv = self.get(version)
        path = self.root / "versions" / version / "model.pt"
        actual = _sha256(path)
        if actual != mv.artifact_sha256:
            raise RegistryError(f"{version}: model.pt sha256 {actual[:12]} != registered {mv.artifact_sha256[:12]}")
        return torch.load(path, weights_only=True)

    def audit(self) -> list[dict]:
        path = self.root / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    # -- writing -----------------------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def register(self, state: dict, mv: ModelVersion, before_commit: Callable[[], None] | None = None) -> ModelVersion:
        """Store a new immutable version (or return the one already registered for mv.run_key)."""
        with self._lock():
            if mv.run_key and (existing := self.find_run(mv.run_key)):
                return existing
            # A writer killed before its rename left this (we hold the lock, so no writer is at work).
            for stale in (self.root / "versions").glob(".new-*"):
                shutil.rmtree(stale, ignore_errors=True)
            n = len(list((self.root / "versions").glob("v*"))) + 1
            mv.version = f"v{n:04d}"
            mv.code_sha = mv.code_sha or git_sha()
            mv.created_at = datetime.now(UTC).isoformat()
            tmp = Path(tempfile.mkdtemp(dir=self.root / "versions", prefix=".new-"))
            try:
                torch.save(state, tmp / "model.pt")
                mv.artifact_sha256 = _sha256(tmp / "model.pt")
                (tmp / "metadata.json").write_text(json.dumps(asdict(mv), indent=2, default=str) + "\n")
                if before_commit:
                    before_commit()  # tests inject a crash here
                os.rename(tmp, self.root / "versions" / mv.version)  # the version appears whole or not at all
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return mv

    def record(self, decision: str, version: str | None, reasons: list[str], **extra) -> dict:
        entry = {"at": datetime.now(UTC).isoformat(), "decision": decision, "version": version, "reasons": reasons}
        entry |= extra
        with open(self.root / "audit.jsonl", "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry

    def _switch(self, champion: str | None, previous: str | None, before_commit=None) -> None:
        text = json.dumps({"champion": champion, "previous": previous}, indent=2) + "\n"
        _atomic_write(self.root / "aliases.json", text, before_commit)

    def promote(self, version: str, reasons: list[str], before_commit=None) -> bool:
        """champion <- version, previous <- old champion. False (and nothing written) if already champion."""
        self.get(version)
        with self._lock():
            current = self.aliases()
            if current["champion"] == version:
                return False
            self._switch(version, current["champion"], before_commit)
            self.record("promoted", version, reasons, replaced=current["champion"])
            return True

    def rollback(self, reasons: list[str], before_commit=None) -> str:
        """champion <- previous (previous <- None: a rolled-back model is never restored automatically)."""
        with self._lock():
            current = self.aliases()
            if not current["previous"]:
                raise RegistryError("no previous model to roll back to")
            self._switch(current["previous"], None, before_commit)
            self.record("rolled_back", current["previous"], reasons, demoted=current["champion"])
            return current["previous"]
