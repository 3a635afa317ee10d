"""`flywheel online`: what the served lists did: CTR per policy version and day, interleaving duels,
feedback-loop health, and the online rollback rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flywheel.cli._common import console, group, utc_option
from flywheel.settings import Settings, load_settings

if TYPE_CHECKING:
    import pyarrow as pa

app = group("Online evaluation of the served lists.")


def _events(topic: str | None) -> tuple[Settings, pa.Table]:
    from flywheel.events.consumer import read_topic
    from training import online
    from training.labels import event_log_files

    cfg = load_settings()
    if topic is None:
        return cfg, online.events_from_log(event_log_files(cfg.offline_dir))
    with console.status(f"reading the served lists and their outcomes from {topic}…"):
        return cfg, online.events_table(v for _, v in read_topic(cfg.kafka, topic))


@app.command("report")
def report_cmd(
    topic: Annotated[str | None, typer.Option(help="read this topic instead of the event log")] = None,
) -> None:
    """Per policy version and day: CTR [95%], exposure Gini, coverage; interleaving; var/online/ report + PNG."""
    from flywheel.serving.catalog import Catalog
    from training import online

    cfg, events = _events(topic)
    catalog = Catalog(cfg.offline_dir, cfg.var_dir)
    catalog.refresh()
    out_dir = cfg.var_dir / "online"
    truth_path = out_dir / "truth.jsonl"
    truth = [json.loads(x) for x in truth_path.read_text().splitlines()] if truth_path.exists() else None
    offline = online.off_policy_estimates(cfg.training.registry_dir, cfg.training.gate.ope_estimator)
    rep = online.report(events, max(len(catalog.categories), 1), truth, offline)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    online.chart(rep, out_dir / "loop.png")
    t = Table("day", "policy", "lists", "impressions", "CTR [95%]", "exposure Gini", "coverage")
    for r in rep["daily"]:
        t.add_row(str(r["day"]), r["policy"], str(r["requests"]), str(r["impressions"]),
                  f"{r['ctr']:.4f} [{r['ctr_low']:.4f}, {r['ctr_high']:.4f}]", f"{r['exposure_gini']:.3f}",
                  f"{r['coverage']:.3f}")  # fmt: skip
    console.print(t)
    for pair, d in rep["interleaving"].items():
        console.print(
            f"interleaved {pair}: {d['champion']} won {d['wins']}, {d['previous']} won {d['losses']}, "
            f"ties {d['ties']}; preference {d['preference']:.3f}, sign test p = {d['p_value']:.4f}"
        )
    t = Table("version", "lists", "online CTR [95%]", "off-policy estimate before serving [95%]")
    for v, row in rep["versions"].items():
        off = row["off_policy"]
        measured = f"{row['online_ctr']:.4f} [{row['online_low']:.4f}, {row['online_high']:.4f}]"
        estimated = "-"
        if off:
            estimated = f"{off['value']:.4f} [{off['ci_low']:.4f}, {off['ci_high']:.4f}] ({off['estimator']})"
        t.add_row(v, str(row["lists"]), measured, estimated)
    console.print(t)
    if "ctr_lift_vs_random" in rep:
        lift = rep["ctr_lift_vs_random"]
        console.print(f"world's truth: the served lists' expected CTR is {lift:.2f}x that of random lists")
    console.print(f"report {out_dir / 'report.json'}; chart {out_dir / 'loop.png'}")


@app.command("check")
def check_cmd(
    end: Annotated[datetime | None, utc_option("end of the window (default: now)")] = None,
) -> None:
    """The online rollback rule (also the daily rollback DAG's last task): roll back a champion whose served
    lists did significantly worse than the previous model's over training.online_rollback.window_days."""
    from training import online

    out = online.check(load_settings(), end or datetime.now(UTC))
    console.print(f"{out['outcome']}: {'; '.join(out.get('reasons', []))}")
