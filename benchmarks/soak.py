"""The feature job's soak (`flywheel bench soak`): the live job on the standalone cluster (`flink run`, as
users run it) at a steady 5k events/s for 20 minutes, checkpoints every `features.checkpoint_interval_ms`
(10 s); figures merged into var/bench/results.json, chart in var/bench/soak.png.

- `soak_checkpoint_ms_p99`: the end-to-end duration of the completed checkpoints, 99th percentile.
- `soak_state_bytes_growth`: the checkpointed state's median size in the last 5 minutes over the first 5.
- `soak_heap_growth`: the TaskManagers' heap floor (the lowest sample: what a collection leaves) in the
  last 5 minutes over the first 5. Heap and checkpoint figures come from Flink's REST API (sampled every
  10 s, as Flink refreshes them).

The traffic is one minute of simulator events sent again and again, each round with event times moved on
by a minute and event ids of its own: event time follows the wall clock and the key space is the world's,
as with users who keep coming back. (Simulating 6M events would take longer than the run.) Windows longer
than the run keep gaining panes while it lasts, so their state grows by design; the figures per
checkpointed vertex say where the growth is.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from flywheel.errors import FlywheelError
from flywheel.settings import Settings

RATE = 5_000  # events/s
MINUTES = 20
POOL_S = 60  # seconds of traffic simulated once and sent again each round
WINDOW_S = 300  # the first and the last 5 minutes are compared
SAMPLE_S = 10.0


class _LoopSender(threading.Thread):
    """Sends round r's copy of pool record i when the wall clock reaches t0 + r * POOL_S + its offset in the
    pool, its event and ingest times moved to that moment and its event id suffixed with the round."""

    def __init__(self, cfg: Settings, topic: str, pool: list[tuple[bytes, dict]], t0: float, stop: threading.Event):
        super().__init__(daemon=True)
        self.cfg, self.topic, self.pool, self.t0, self.stop = cfg, topic, pool, t0, stop
        self.count = 0
        self.behind_s = 0.0  # the largest lag of a send behind its time

    def run(self) -> None:
        import orjson

        from flywheel.events.producer import EventProducer

        first = self.pool[0][1]["event_time"]
        offsets = [(doc["event_time"] - first) / 1000 for _, doc in self.pool]
        with EventProducer(self.cfg.kafka, self.topic, validate_events=False) as producer:
            r = 0
            while not self.stop.is_set():
                round_start = self.t0 + r * POOL_S
                shift_ms = int(round_start * 1000) - first
                for (key, doc), offset in zip(self.pool, offsets, strict=True):
                    due = round_start + offset
                    while (wait := due - time.time()) > 0:
                        if self.stop.wait(min(wait, 0.01)):
                            return
                    self.behind_s = max(self.behind_s, -wait)
                    moved = {**doc, "event_id": f"{doc['event_id']}-r{r}", "event_time": doc["event_time"] + shift_ms,
                             "ingest_time": doc["ingest_time"] + shift_ms}  # fmt: skip
                    producer.send_raw(orjson.dumps(moved), key)
                    self.count += 1
                r += 1


def _pool(rate: int, log) -> list[tuple[bytes, dict]]:
    """POOL_S seconds of simulator traffic at `rate` (the features benchmark's world, a fixed catalog)."""
    from datetime import UTC, datetime

    import orjson

    from benchmarks.features import SHAPE
    from flywheel.events.simulator import SimConfig, simulate

    log(f"simulating {rate * POOL_S:,} events ({POOL_S} s of traffic, sent again each round)")
    sim = simulate(
        SimConfig(events=rate * POOL_S, users=SHAPE["users"], items=SHAPE["items"], categories=SHAPE["categories"],
                  start=datetime.now(UTC), days=POOL_S / 86400, seed=SHAPE["seed"] + 2, new_items_per_day=0)
    )  # fmt: skip
    pool = [(k, orjson.loads(v)) for k, v in zip(sim.keys, sim.values, strict=True)]
    return sorted(pool, key=lambda kd: kd[1]["event_time"])


def _heap_bytes(cfg: Settings) -> int | None:
    """Heap used, summed over the TaskManagers (None until each one reports it)."""
    from flywheel.clients.flink import rest

    total = 0
    for tm in rest(cfg, "GET", "/taskmanagers")["taskmanagers"]:
        got = rest(cfg, "GET", f"/taskmanagers/{tm['id']}/metrics", params={"get": "Status.JVM.Memory.Heap.Used"})
        if not got:
            return None
        total += int(float(got[0]["value"]))
    return total


def _vertex_state(cfg: Settings, job_id: str, checkpoint_id: int) -> dict[str, int]:
    """Checkpointed state size per vertex (by name) of one checkpoint."""
    from flywheel.clients.flink import job, rest

    names = {v["id"]: v["name"] for v in job(cfg, job_id)["vertices"]}
    details = rest(cfg, "GET", f"/jobs/{job_id}/checkpoints/details/{checkpoint_id}")
    return {names.get(vid, vid): int(t.get("state_size", 0)) for vid, t in details.get("tasks", {}).items()}


def run(cfg: Settings, log=print, rate: int = RATE, minutes: float = MINUTES) -> dict:
    import numpy as np

    from benchmarks.features import clean_up, job_options
    from benchmarks.results import merge
    from flywheel.clients import feast_store
    from flywheel.clients.flink import cancel, checkpoints, rest, submit
    from flywheel.clients.kafka import ensure_topics

    overview = rest(cfg, "GET", "/overview")  # a FlinkError naming the fix when no cluster answers
    log(f"  {feast_store.apply(cfg)}")  # the job's Redis sink is configured from the registry
    pool = _pool(rate, log)
    topic = f"flywheel.bench.soak-{uuid.uuid4().hex[:8]}"
    opt = job_options(cfg, topic, bounded=False)
    ensure_topics(cfg.kafka, [topic, opt.dlq_topic, opt.late_topic])
    job_id = submit(cfg, opt.argv())
    log(f"soak: job {job_id} on {overview['taskmanagers']} TaskManager(s), {rate:,} events/s for {minutes:g} min")
    stop = threading.Event()
    t0 = time.time() + 5
    sender = _LoopSender(cfg, topic, pool, t0, stop)
    completed: dict[int, dict] = {}
    heap: list[tuple[float, int]] = []
    end = t0 + minutes * 60
    try:
        sender.start()
        next_log = t0 + 60
        by_vertex: dict[str, dict[str, int]] = {}
        while (now := time.time()) < end:
            for c in checkpoints(cfg, job_id)["history"]:
                if c["status"] == "COMPLETED" and c["id"] not in completed:
                    completed[c["id"]] = c
            if (used := _heap_bytes(cfg)) is not None:
                heap.append((now - t0, used))
            if "5 min" not in by_vertex and now - t0 >= WINDOW_S and completed:  # Flink keeps only recent details
                by_vertex["5 min"] = _vertex_state(cfg, job_id, max(completed))
            if now >= next_log:
                last = completed[max(completed)] if completed else {}
                log(f"  {now - t0:5.0f} s: {sender.count:,} sent (at most {sender.behind_s:.2f} s behind), "
                    f"{len(completed)} checkpoints, state {last.get('state_size', 0) / 1e6:.1f} MB, "
                    f"heap {heap[-1][1] / 1e6 if heap else 0:.0f} MB")  # fmt: skip
                next_log += 60
            time.sleep(max(0.0, SAMPLE_S - (time.time() - now)))
        stop.set()
        sender.join()
        if not completed:
            raise FlywheelError(f"no checkpoint of job {job_id} completed: see its exceptions in the Flink UI")
        by_vertex["end"] = _vertex_state(cfg, job_id, max(completed))
    finally:
        stop.set()
        cancel(cfg, job_id)
        clean_up(cfg, opt, topic, log=log)

    def at(c: dict) -> float:
        return c["latest_ack_timestamp"] / 1000 - t0

    done = sorted(completed.values(), key=at)
    durations = np.array([c["end_to_end_duration"] for c in done])
    span = minutes * 60

    def median_state(lo: float, hi: float) -> float:
        return float(np.median([c["state_size"] for c in done if lo <= at(c) < hi]))

    def heap_floor(lo: float, hi: float) -> int:
        return min(b for t, b in heap if lo <= t < hi)

    figures: dict[str, Any] = {
        "soak_rate_events_per_s": rate,
        "soak_minutes": minutes,
        "soak_events_sent": sender.count,
        "soak_send_max_behind_s": round(sender.behind_s, 2),
        "soak_checkpoints": len(done),
        "soak_checkpoint_interval_ms": cfg.features.checkpoint_interval_ms,
        "soak_checkpoint_ms_p50": round(float(np.percentile(durations, 50))),
        "soak_checkpoint_ms_p99": round(float(np.percentile(durations, 99))),
        "soak_checkpoint_ms_max": int(durations.max()),
        "soak_state_bytes_first_5min": round(median_state(0, WINDOW_S)),
        "soak_state_bytes_last_5min": round(median_state(span - WINDOW_S, span + 60)),
        "soak_heap_floor_bytes_first_5min": heap_floor(0, WINDOW_S),
        "soak_heap_floor_bytes_last_5min": heap_floor(span - WINDOW_S, span + 60),
        "soak_state_bytes_by_vertex_at_5_min_and_end": {
            name: [by_vertex.get("5 min", {}).get(name, 0), size] for name, size in by_vertex["end"].items()
        },
    }
    figures["soak_state_bytes_growth"] = round(
        figures["soak_state_bytes_last_5min"] / figures["soak_state_bytes_first_5min"], 3
    )
    figures["soak_heap_growth"] = round(
        figures["soak_heap_floor_bytes_last_5min"] / figures["soak_heap_floor_bytes_first_5min"], 3
    )
    merge(cfg, figures)
    _chart(cfg, [(at(c), c["end_to_end_duration"], c["state_size"]) for c in done], heap, span)
    return figures


def _chart(cfg: Settings, done: list[tuple[float, int, int]], heap: list[tuple[float, int]], span: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    minutes = [t / 60 for t, _, _ in done]
    axes[0].plot(minutes, [d for _, d, _ in done], ".", color="#264653")
    axes[0].set_ylabel("checkpoint ms")
    axes[1].plot(minutes, [s / 1e6 for _, _, s in done], color="#2a9d8f")
    axes[1].set_ylabel("state MB")
    axes[2].plot([t / 60 for t, _ in heap], [b / 1e6 for _, b in heap], color="#e76f51")
    axes[2].set_ylabel("heap used MB")
    axes[2].set_xlabel("minutes into the soak")
    for ax in axes:
        ax.axvspan(0, WINDOW_S / 60, color="#eeeeee")
        ax.axvspan((span - WINDOW_S) / 60, span / 60, color="#eeeeee")
        ax.set_ylim(bottom=0)
    fig.suptitle("feature job soak: compared windows shaded")
    fig.tight_layout()
    fig.savefig(cfg.var_dir / "bench" / "soak.png", dpi=110)
    plt.close(fig)
