"""A model version's report: holdout metrics, off-policy value of its ranking policy against the random
and popularity baselines (IPS, SNIPS, DR with 95% intervals), feedback-loop health, training curves and
the Data Docs of its training set. Written as Markdown + JSON + PNG next to the version."""

from __future__ import annotations

import json
from pathlib import Path

from training.registry import ModelVersion, Registry


def _ope_chart(ope: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = ["model", "popularity", "random"]
    estimators = [e for e in ("ips", "snips", "dr") if e in ope["model"]]
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(estimators)
    for j, est in enumerate(estimators):
        vals = [ope[p][est]["value"] for p in policies]
        err = [[ope[p][est]["value"] - ope[p][est]["ci_low"] for p in policies],
               [ope[p][est]["ci_high"] - ope[p][est]["value"] for p in policies]]  # fmt: skip
        ax.bar([i + j * width for i in range(len(policies))], vals, width, yerr=err, capsize=3, label=est.upper())
    ax.axhline(ope["logged_click_rate"], color="grey", linestyle="--", label="logging policy (observed)")
    ax.set_xticks([i + width * (len(estimators) - 1) / 2 for i in range(len(policies))], policies)
    ax.set_ylabel("estimated click rate")
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
    ope_rows = ["| policy | IPS | SNIPS | DR |", "|---|---|---|---|"]
    for p in ("model", "popularity", "random"):
        cells = [f"{ope[p][e]['value']:.4f} [{ope[p][e]['ci_low']:.4f}, {ope[p][e]['ci_high']:.4f}]"
                 for e in ("ips", "snips", "dr")]  # fmt: skip
        ope_rows.append(f"| {p} | {' | '.join(cells)} |")
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
            f"## Off-policy value ({ope['rows']} logged rows, {ope['candidates']} candidate items, "
            f"observed click rate {ope['logged_click_rate']:.4f})",
            *ope_rows,
            "",
            "![training curves](curves.png)  ![off-policy value](ope.png)",
            "",
            f"Data Docs: {data_docs or 'var/gx/uncommitted/data_docs/local_site/index.html'}",
            "",
        ]
    )
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({k: v for k, v in m.items() if k != "curves"}, indent=2) + "\n")
    return out / "report.md"
