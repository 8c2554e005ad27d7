"""Figures of the book, each written as PNG next to the JSON of the data it shows."""
from __future__ import annotations

from pathlib import Path

from .artifacts import atomic_path, write_json


def _save(fig, path: Path, data) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    write_json(path.with_suffix(".json"), data)
    return path


def plot_results(results, path) -> Path:
    """Bars per set × rendering for each task, one colour per method; also writes the data as JSON."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    frame = results.frame()
    tasks = list(dict.fromkeys(frame["task"]))
    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = frame[frame["task"] == task]
        groups = list(dict.fromkeys(zip(sub["set"], sub["rendering"])))
        width = 0.8 / len(methods)
        for m, method in enumerate(methods):
            values = [100 * sub[(sub["method"] == method) & (sub["set"] == s) & (sub["rendering"] == r)]["value"].mean()
                      for s, r in groups]
            ax.bar([g + m * width for g in range(len(groups))], values, width, label=method)
        ax.set_xticks([g + width * (len(methods) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels([f"{s}\n{'img+txt' if r == 'image_text' else 'text'}" for s, r in groups], fontsize=7)
        ax.set_title(f"{task} ({sub['metric'].iloc[0]})")
        ax.set_ylim(0, 105)
    axes[0][0].set_ylabel("%")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = _save(fig, path, list(results))
    plt.close(fig)
    return path
