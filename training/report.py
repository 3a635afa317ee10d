"""A model version's report: holdout metrics, off-policy value of its serving policy against the random
and popularity baselines (IPS, SNIPS, DR with 95% intervals, the rows used and their coverage), the
comparison with the champion on rows neither trained on, feedback-loop health, training curves and the
Data Docs of its training set. Written as Markdown + JSON + PNG next to the version."""

from __future__ import annotations

import json
from pathlib import Path

from training.registry import ModelVersion, Registry


def _ope_chart(ope: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = [p for p in ("model", "champion", "popularity", "random") if p in ope["policies"]]
    estimators = [e for e in ("ips", "snips", "dr") if e in ope["policies"]["model"]]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(estimators)
    for j, est in enumerate(estimators):
        e = [ope["policies"][p][est] for p in policies]
        vals = [x["value"] for x in e]
        err = [[x["value"] - x["ci_low"] for x in e], [x["ci_high"] - x["value"] for x in e]]
        ax.bar([i + j * width for i in range(len(policies))], vals, width, yerr=err, capsize=3, label=est.upper())
    ax.axhline(ope["logged_click_rate"], color="grey", linestyle="--", label="logging policy (observed)")
    ax.set_xticks([i + width * (len(estimators) - 1) / 2 for i in range(len(policies))], policies)
    ax.set_ylabel("estimated click rate per slot")
    ax.set_title(f"{ope['rows']} logged rows, coverage {ope['coverage']:.0%}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(reg: Registry, version: str, data_docs: str | None = None) -> Path:
    mv: ModelVersion = reg.get(version)
    m = mv.metrics
    out = reg.root / "versions" / version
    ope = m["ope"]
    _ope_chart(ope, out / "ope.png")
    rows = [
        "| metric | value |",
        "|---|---|",
        *(
            f"| {k} | {m[k]:.4f} |"
            for k in (
                "auc",
                "logloss",
                "ece",
                "ndcg@5",
                "recall@5",
                "exposure_gini",
                "catalog_coverage",
                "holdout_click_rate",
            )
            if k in m
        ),  # fmt: skip
        f"| holdout rows | {m['holdout_rows']} |",
    ]
    ope_rows = _ope_table(ope)
    champion = _champion_section(m.get("champion"))
    text = "\n".join(
        [
            f"# Model {version} ({mv.mode})",
            "",
            f"Data window {mv.data_window.get('start')} .. {mv.data_window.get('end')}; feature service "
            f"{mv.feature_service} v{mv.feature_service_version}; training set sha256 {mv.trainset_sha256[:12]}; "
            f"code {mv.code_sha[:10]}; parent {mv.parent_version or '-'}.",
            "",
            "## Holdout (the latest 20% of the window, by event time)",
            *rows,
            "",
            f"## Off-policy value of the serving policy (temperature {ope['policy']['temperature']}, "
            f"epsilon {ope['policy']['epsilon']})",
            "",
            f"{ope['rows']} logged holdout rows, {ope['candidates']} candidate items, {ope['slots']} slots; "
            f"coverage {ope['coverage']:.1%} (rows whose item is a candidate; the others count with weight 0); "
            f"observed click rate of the logging policy {ope['logged_click_rate']:.4f}.",
            "",
            *ope_rows,
            "",
            *champion,
            "![training curves](curves.png)  ![off-policy value](ope.png)",
            "",
            f"Data Docs: {data_docs or 'var/gx/uncommitted/data_docs/local_site/index.html'}",
            "",
        ]
    )
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({k: v for k, v in m.items() if k != "curves"}, indent=2) + "\n")
    return out / "report.md"


def _cell(e: dict) -> str:
    return f"{e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


def _ope_table(ope: dict) -> list[str]:
    rows = ["| policy | IPS | SNIPS | DR |", "|---|---|---|---|"]
    for p, est in ope["policies"].items():
        rows.append(f"| {p} | {' | '.join(_cell(est[e]) for e in ('ips', 'snips', 'dr') if e in est)} |")
    for pair, est in ope["versus"].items():
        rows.append(f"| {pair} (paired) | {' | '.join(_cell(est[e]) for e in ('ips', 'snips', 'dr') if e in est)} |")
    return rows


def _champion_section(champ: dict | None) -> list[str]:
    if not champ:
        return []
    head = [f"## Against champion {champ['version']}", ""]
    if "ope" not in champ:
        return [*head, f"Not compared: {champ['rows']} holdout rows lie outside its training windows "
                f"({champ['excluded_rows']} inside).", ""]  # fmt: skip
    return [
        *head,
        f"On {champ['rows']} holdout rows outside its training windows ({champ['excluded_rows']} inside were "
        f"left out): AUC {champ['candidate_auc']:.4f} vs {champ['auc']:.4f}, log-loss "
        f"{champ['candidate_logloss']:.4f} vs {champ['logloss']:.4f}.",
        "",
        *_ope_table(champ["ope"]),
        "",
    ]
