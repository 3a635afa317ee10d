"""`flywheel infra up | down | status` over the services, in dependency order."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable

from flywheel.settings import Settings, load_settings
from flywheel.stack.processes import InfraError
from flywheel.stack.services import SERVICES, Service, Status, ensure_local_secrets

ORDER = ["kafka", "redis", "flink", "airflow"]


def _select(names: Iterable[str] | None) -> list[str]:
    chosen = list(names) if names else ORDER
    unknown = [n for n in chosen if n not in SERVICES]
    if unknown:
        raise InfraError(f"unknown service(s) {unknown}; choose from {ORDER}")
    return [n for n in ORDER if n in chosen]


def services(cfg: Settings, names: Iterable[str] | None = None) -> list[Service]:
    return [SERVICES[n](cfg) for n in _select(names)]


def up(
    names: Iterable[str] | None = None,
    cfg: Settings | None = None,
    report: Callable[[str, str], None] = lambda name, state: None,
) -> Settings:
    """Start (or confirm) each selected service and wait for health. Returns the settings used."""
    cfg = cfg or load_settings()
    if ensure_local_secrets(cfg):
        cfg = load_settings()
    for svc in services(cfg, names):
        report(svc.name, "starting…")
        report(svc.name, svc.up())
    return cfg


def down(names: Iterable[str] | None = None, purge: bool = False, cfg: Settings | None = None) -> list[str]:
    """Stop what we started (reverse order). With purge, also delete var/ (data, logs, secrets)."""
    cfg = cfg or load_settings()
    stopped = [svc.name for svc in reversed(services(cfg, names)) if svc.down()]
    if purge and cfg.var_dir.exists():
        shutil.rmtree(cfg.var_dir)
    return stopped


def status(names: Iterable[str] | None = None, cfg: Settings | None = None) -> list[Status]:
    cfg = cfg or load_settings()
    return [svc.status() for svc in services(cfg, names)]
