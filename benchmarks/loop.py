"""The flywheel turning (`flywheel bench loop`): a bootstrap week and WEEKS served weeks of a simulated world
(flywheel.loop), each weekly retrain run in this process (the DAG's tasks, `tasks.retrain_here`; no
Airflow needed). The figure is `loop_ctr_lift_vs_random`: by the world's truth, the expected CTR of the
lists the service served over that of uniformly random lists of the same candidates, in the last served
week (and per week: `loop_ctr_lift_week_<n>`). No target yet: it reports how far the loop gets.

Kept apart from the user's state: a var directory of its own (registry, offline store, training sets,
checkpoints; `var/bench/loop-work`, emptied first), world ids prefixed `benchloop-` in the shared Redis,
topics of its own; only Kafka and Redis of the running stack are shared. Chart var/bench/loop.png.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime

from flywheel.settings import Settings

WEEKS = 3


def run(cfg: Settings, log: Callable[[str], None] = print) -> dict:
    from flywheel import loop
    from flywheel.orchestration import tasks

    plan = loop.LoopPlan(weeks=WEEKS, id_prefix="benchloop-")
    start = datetime.fromisoformat(cfg.simulator.start.replace("Z", "+00:00"))
    with loop.own_state(cfg, cfg.var_dir / "bench" / "loop-work") as own:
        result = loop.run(own, plan, tasks.retrain_here, start,
                          say=lambda m: log(f"  {m}"))  # fmt: skip
        shutil.copy(own.var_dir / "online" / "loop.png", cfg.var_dir / "bench" / "loop.png")
    served = [w for w in result.weeks if w.served_by]
    figures: dict[str, float | int] = {
        "loop_ctr_lift_vs_random": round(served[-1].lift, 3),
        "loop_weeks": len(served),
        "loop_promotions": sum(1 for w in result.weeks if w.decision and w.decision["decision"] == "promoted"),
        "loop_late_events": result.reconciled["late"],
    }
    for w in served:
        figures[f"loop_ctr_lift_week_{w.index}"] = round(w.lift, 3)
    return figures
