"""Tables and plots of an eval result (`{"base": {...}, "tuned": {...}}`), shared by `llmft eval` and the run
report."""
from __future__ import annotations

from pathlib import Path

from llmft.io import atomic_write

OVERALL_METRICS = (("loss", "loss"), ("perplexity", "perplexity"), ("rougeL", "ROUGE-L"),
                   ("exact_match", "exact match"), ("n", "records"))


def _models(eval_dict: dict) -> list[str]:
    return [name for name in ("base", "tuned") if name in eval_dict]


def _fmt(value) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}" if value == value else "n/a"
    return "" if value is None else str(value)


def _delta(base, tuned) -> str:
    if isinstance(base, (int, float)) and isinstance(tuned, (int, float)) and base == base and tuned == tuned:
        return f"{tuned - base:+.2f}"
    return ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _with_delta(names: list[str]) -> list[str]:
    return names + (["delta"] if names == ["base", "tuned"] else [])


def overall_table(eval_dict: dict) -> str:
    names = _models(eval_dict)
    rows = []
    for key, label in OVERALL_METRICS:
        values = [eval_dict[n].get(key) for n in names]
        row = [label] + [_fmt(v) for v in values]
        if len(names) == 2 and key != "n":
            row.append(_delta(*values))
        elif len(names) == 2:
            row.append("")
        rows.append(row)
    return _table(["metric"] + _with_delta(names), rows)


def group_table(eval_dict: dict, by: str = "per_source") -> str:
    """ROUGE-L and exact match of each source (or task), base next to tuned."""
    names = _models(eval_dict)
    groups = sorted({g for n in names for g in eval_dict[n].get(by, {})})
    header = [by.removeprefix("per_"), "n"]
    for metric in ("rougeL", "exact_match"):
        header += [f"{metric} {n}" for n in names]
    rows = []
    for group in groups:
        cells = [eval_dict[n].get(by, {}).get(group, {}) for n in names]
        row = [group, _fmt(cells[-1].get("n"))]
        for metric in ("rougeL", "exact_match"):
            row += [_fmt(c.get(metric)) for c in cells]
        rows.append(row)
    return _table(header, rows)


def comparison_table(eval_dict: dict) -> str:
    """Markdown: the overall comparison, then per source (and per task when there are several tasks)."""
    parts = ["### Overall", overall_table(eval_dict), "", "### Per source", group_table(eval_dict, "per_source")]
    any_model = eval_dict[_models(eval_dict)[-1]]
    if len(any_model.get("per_task", {})) > 1:
        parts += ["", "### Per task", group_table(eval_dict, "per_task")]
    return "\n".join(parts) + "\n"


def plot_group(eval_dict: dict) -> str:
    """Plot per source when there are several sources, else per task."""
    any_model = eval_dict[_models(eval_dict)[-1]]
    return "per_source" if len(any_model.get("per_source", {})) > 1 else "per_task"


def plot_base_vs_tuned(eval_dict: dict, path: str | Path, by: str | None = None) -> Path:
    """Grouped bars, base next to tuned, of ROUGE-L and exact match per source (or task); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by = by or plot_group(eval_dict)
    names = _models(eval_dict)
    groups = sorted({g for n in names for g in eval_dict[n].get(by, {})})
    x = np.arange(len(groups))
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(groups) + 4), 4.5), squeeze=False)
    for ax, (metric, label) in zip(axes[0], (("rougeL", "ROUGE-L"), ("exact_match", "exact match"))):
        for i, name in enumerate(names):
            values = [eval_dict[name].get(by, {}).get(g, {}).get(metric, 0.0) for g in groups]
            bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_title(f"{label} {by.replace('_', ' ')}")
        ax.set_xticks(x, [g if len(g) <= 24 else g[:22] + "…" for g in groups], rotation=30, ha="right",
                      fontsize=8)
        ax.set_ylim(0, 105)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
