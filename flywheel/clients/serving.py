"""A client of the ranking service (`flywheel serve`): one keep-alive session per thread."""

from __future__ import annotations

import threading
from typing import Any

import requests

from flywheel.errors import FlywheelError


class ServiceError(FlywheelError):
    pass


class RankingClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def _down(self, exc: Exception) -> ServiceError:
        return ServiceError(f"the ranking service at {self.url} does not answer ({exc}): start `flywheel serve`")

    def rank(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self._session().post(f"{self.url}/rank", json=body, timeout=self.timeout_s)
        except requests.ConnectionError as exc:
            raise self._down(exc) from None
        if r.status_code != 200:
            raise ServiceError(f"POST /rank: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def health(self) -> dict[str, Any]:
        try:
            return self._session().get(f"{self.url}/healthz", timeout=self.timeout_s).json()
        except requests.ConnectionError as exc:
            raise self._down(exc) from None
