"""Training: inverse-propensity-weighted BCE, full (from scratch) or incremental (warm start).

Logged data over-represents what the logging policy liked and what sat high in the list. Each row is
weighted by 1 / (logged propensity x examination(position)), clipped, then self-normalised (mean 1),
so the model learns relevance rather than the old policy's exposure.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from tqdm import tqdm

from feature_repo.spec import EXAMINATION_ETA
from training.model import Batch, ModelConfig, Ranker, to_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 3e-3
    incremental_lr: float = 1e-3
    weight_clip: float = 50.0
    seed: int = 7


def ips_weights(table: pa.Table, clip: float) -> np.ndarray:
    """Clipped, self-normalised inverse propensity of being shown here and examined there."""
    p = np.asarray(table.column("propensity").to_numpy(zero_copy_only=False), dtype=np.float64)
    pos = np.asarray(table.column("position").to_numpy(zero_copy_only=False), dtype=np.float64)
    w = np.minimum(1.0 / np.clip(p * pos**-EXAMINATION_ETA, 1e-9, None), clip)
    return w / w.mean()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def predict(model: Ranker, batch: Batch, size: int = 8192) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(batch.label), size):
            out.append(torch.sigmoid(model(batch.dense[i : i + size], batch.cats[i : i + size])).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def fit(
    train: pa.Table,
    valid: pa.Table,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    warm_start: dict | None = None,
    progress: bool = True,
) -> tuple[Ranker, dict[str, list[float]]]:
    """Train and return the model with its per-epoch curves (train loss, validation log-loss and AUC)."""
    from training.evaluate import auc, log_loss

    seed_everything(cfg.seed)
    model = Ranker(model_cfg)
    if warm_start is not None:
        model.load_state_dict(warm_start)
    lr = cfg.incremental_lr if warm_start is not None else cfg.lr
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tb = to_batch(train, model_cfg, ips_weights(train, cfg.weight_clip))
    vb = to_batch(valid, model_cfg, np.ones(valid.num_rows))
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    curves: dict[str, list[float]] = {"train_loss": [], "valid_logloss": [], "valid_auc": []}
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(tb.label)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        steps = range(0, n, cfg.batch_size)
        for i in tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
            idx = order[i : i + cfg.batch_size]
            logits = model(tb.dense[idx], tb.cats[idx])
            loss = (loss_fn(logits, tb.label[idx]) * tb.weight[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        p = predict(model, vb)
        curves["train_loss"].append(total / max(seen, 1))
        curves["valid_logloss"].append(log_loss(vb.label.numpy(), p))
        curves["valid_auc"].append(auc(vb.label.numpy(), p))
        if progress:
            log.info(
                f"epoch {epoch + 1}: train loss {curves['train_loss'][-1]:.4f}  "
                f"valid log-loss {curves['valid_logloss'][-1]:.4f}  AUC {curves['valid_auc'][-1]:.4f}"
            )
    return model, curves
