"""The models the service ranks with, following the registry's aliases: a promotion or a rollback is picked
up within `serving.reload_interval_s`. A new version is loaded completely (weights checked against their
sha256) before one reference swap makes it current, so a request sees either the old set or the new one
and none fails during the switch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from flywheel.serving.features import Served
from training.model import ModelConfig, Ranker, served_batch, to_batch
from training.pipeline import load_model
from training.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    version: str
    model: Ranker
    mcfg: ModelConfig
    feature_service: str

    def logits(self, table: pa.Table) -> np.ndarray:
        """The ranker's logit for every row of an `as_served` table (the same batch code as training)."""
        batch = to_batch(table, self.mcfg, np.ones(table.num_rows))
        with torch.no_grad():
            return self.model(batch.dense, batch.cats).numpy().astype(np.float64)

    def score(self, served: Served) -> np.ndarray:
        """`logits(served.table())` without the table (the request path; equal, tests/unit/test_model.py)."""
        dense, cats = served_batch(served.keys(), served.columns, self.mcfg)
        with torch.no_grad():
            return self.model(dense, cats).numpy().astype(np.float64)


@dataclass(frozen=True)
class Current:
    champion: Loaded | None
    previous: Loaded | None


class Models:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.current = Current(None, None)
        self.swaps = 0

    def _load(self, version: str | None, have: Loaded | None) -> Loaded | None:
        if version is None:
            return None
        if have is not None and have.version == version:
            return have
        for old in (self.current.champion, self.current.previous):  # a rollback reuses the loaded previous
            if old is not None and old.version == version:
                return old
        model, mcfg = load_model(self.registry, version)
        return Loaded(version, model, mcfg, self.registry.get(version).feature_service)

    def refresh(self) -> bool:
        """Follow the aliases; True when the current set changed."""
        aliases = self.registry.aliases()
        cur = self.current
        if (aliases["champion"], aliases["previous"]) == (
            cur.champion.version if cur.champion else None,
            cur.previous.version if cur.previous else None,
        ):
            return False
        new = Current(self._load(aliases["champion"], cur.champion), self._load(aliases["previous"], cur.previous))
        self.current = new  # one reference swap: requests in flight keep the set they started with
        self.swaps += 1
        log.info(
            "serving champion %s (previous %s)",
            new.champion.version if new.champion else None,
            new.previous.version if new.previous else None,
        )
        return True
