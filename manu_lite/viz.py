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


def _subplots(*args, figsize, **kwargs):
    """``(fig, axes)`` like ``plt.subplots``, on a bare Figure: no pyplot state, no backend switch, so a user's
    inline plots keep working after the package draws a figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _finish(fig, path, data) -> Path:
    """Lay out and save ``fig`` (PNG + JSON of ``data``)."""
    fig.tight_layout()
    return _save(fig, path, data)


def plot_results(results, path) -> Path:
    """Bars per set × rendering for each task, one colour per method; also writes the data as JSON."""
    frame = results.frame()
    tasks = list(dict.fromkeys(frame["task"]))
    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = _subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), sharey=True, squeeze=False)
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
    return _finish(fig, path, list(results))


# ------------------------------------------------------------------------------------ comparison figures
RENDERING_LABELS = {"image_text": "image+text", "text_only": "text-only"}


def plot_tradeoff(points: list[dict], path) -> Path:
    """Forget drop vs retain drop (points, mean over tasks), one panel per rendering, one curve per family.

    ``points``: sweep points of :func:`manu_lite.compare.run_sweeps` (``label, family, param, x, drops``); each
    curve follows its knob (alpha or steps), annotated at every point. Upper left is better: much forgotten,
    little retain loss. The dotted line marks the 5-point retain budget.
    """
    fig, axes = _subplots(1, 2, figsize=(11, 4.4), sharey=True)
    families = list(dict.fromkeys(p["family"] for p in points))
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    for ax, rendering in zip(axes, RENDERING_LABELS):
        for k, family in enumerate(families):
            curve = sorted((p for p in points if p["family"] == family), key=lambda p: p["x"])
            xs = [p["drops"]["retain"][rendering] for p in curve]
            ys = [p["drops"]["forget"][rendering] for p in curve]
            style = "-o" if curve[0]["param"] == "alpha" else "--s"
            ax.plot(xs, ys, style, color=colours(k % 10), label=family, markersize=4)
            for p, x, y in zip(curve, xs, ys):
                ax.annotate(f"{p['x']:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axvline(5, color="grey", linestyle=":", linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(f"{RENDERING_LABELS[rendering]} (numbers: alpha % or steps)")
        ax.set_xlabel("retain drop (points)")
    axes[0].set_ylabel("forget drop (points)")
    axes[1].legend(fontsize=7, loc="best")
    return _finish(fig, path, [{k: p[k] for k in ("label", "family", "param", "x", "drops")} for p in points])


def plot_balance(summary: dict, path) -> Path:
    """Forget drop per rendering for each method, and the modality balance |Δ(image+text) − Δ(text-only)|."""
    methods = [m for m in summary["methods"] if m != "Vanilla"]
    forget = {m: summary["methods"][m]["drops"]["forget"] for m in methods}
    imbalance = {m: summary["methods"][m]["balance"] for m in methods}
    fig, (left, right) = _subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.4
    for k, rendering in enumerate(RENDERING_LABELS):
        left.bar([i + k * width for i in range(len(methods))], [forget[m][rendering] for m in methods], width,
                 label=RENDERING_LABELS[rendering])
    left.set_xticks([i + width / 2 for i in range(len(methods))])
    left.set_xticklabels(methods, fontsize=7, rotation=20)
    left.set_ylabel("forget drop (points)")
    left.axhline(0, color="grey", linewidth=0.5)
    left.legend(fontsize=7)
    right.bar(range(len(methods)), [imbalance[m] for m in methods], color="tab:red")
    right.set_xticks(range(len(methods)))
    right.set_xticklabels(methods, fontsize=7, rotation=20)
    right.set_title("|Δforget(image+text) − Δforget(text-only)|", fontsize=9)
    right.set_ylabel("points (0 = balanced)")
    return _finish(fig, path, {"forget_drop": forget, "balance": imbalance})


def plot_pruned_heatmap(masks: dict[str, dict], path) -> Path:
    """Share of neurons pruned per layer (rows: vision layers, then language layers) for each mask (columns).

    ``masks``: label → :meth:`manu_lite.prune.NeuronMask.summary` (its ``per_site`` counts). Cells show the
    percentage and the count.
    """
    labels = list(masks)
    sites = sorted({s for m in masks.values() for s in m["per_site"]},
                   key=lambda s: (s.split(".")[0] != "vision", int(s.split(".")[1])))
    grid = [[100 * masks[l]["per_site"].get(s, {}).get("selected", 0) / max(1, masks[l]["per_site"].get(s, {}).get("of", 0))
             for l in labels] for s in sites]
    fig, ax = _subplots(figsize=(1.0 + 1.1 * len(labels), 0.9 + 0.45 * len(sites)))
    image = ax.imshow(grid, cmap="magma_r", aspect="auto", vmin=0)
    for i, site in enumerate(sites):
        for j, label in enumerate(labels):
            count = masks[label]["per_site"].get(site, {}).get("selected", 0)
            ax.text(j, i, f"{grid[i][j]:.0f}%\n{count}", ha="center", va="center", fontsize=6,
                    color="white" if grid[i][j] > 0.6 * max(max(r) for r in grid) else "black")
    vision_rows = sum(s.startswith("vision") for s in sites)
    if 0 < vision_rows < len(sites):
        ax.axhline(vision_rows - 0.5, color="tab:blue", linewidth=2)
    ax.set_yticks(range(len(sites)))
    ax.set_yticklabels(sites, fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=6, rotation=40, ha="right")
    fig.colorbar(image, ax=ax, label="% of the layer's neurons pruned")
    ax.set_title("pruned neurons per layer (vision above the line, language below)", fontsize=8)
    return _finish(fig, path, {"sites": sites, "masks": masks})


def plot_robustness(summary: dict, path) -> Path:
    """Relearning attack (forget score after unlearning and after each attack) and membership-inference AUC."""
    rows = summary["methods"]
    methods = list(rows)
    fig, (left, right) = _subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    series = {"unlearned": [100 * rows[m]["forget_score"] for m in methods]}
    for source in ("forget", "retain"):
        series[f"+relearn on {source}"] = [100 * rows[m].get("relearn_forget_score", {}).get(source, float("nan"))
                                          for m in methods]
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        left.bar([i + k * width for i in range(len(methods))], values, width, label=name)
    if "Vanilla" in rows:
        left.axhline(100 * rows["Vanilla"]["forget_score"], color="black", linestyle=":", linewidth=1, label="vanilla")
    left.set_xticks([i + width for i in range(len(methods))])
    left.set_xticklabels(methods, fontsize=7, rotation=20)
    left.set_ylabel("forget score (%, mean of tasks)")
    left.legend(fontsize=7)
    aucs = [rows[m]["mia"]["auc"] if rows[m].get("mia") else float("nan") for m in methods]
    right.bar(range(len(methods)), aucs, color="tab:purple")
    right.axhline(0.5, color="grey", linestyle=":")
    right.set_ylim(0, 1)
    right.set_xticks(range(len(methods)))
    right.set_xticklabels(methods, fontsize=7, rotation=20)
    right.set_title("membership inference AUC (forget vs never seen)", fontsize=9)
    def finite(values):  # JSON has no NaN: a missing value is null
        return {m: (None if v != v else v) for m, v in zip(methods, values)}

    return _finish(fig, path, {**{name: finite(values) for name, values in series.items()}, "mia_auc": finite(aucs)})
