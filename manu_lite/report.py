"""What ``compare`` writes besides its JSON: the paper-style and summary tables (CSV + Markdown) and the
comparison's figures (PNG next to the JSON of the data they show)."""
from __future__ import annotations

from pathlib import Path

from .artifacts import atomic_path
from .config import RENDERINGS, SETS, TASKS
from .evaluate import Results
from .viz import PAGE_WIDTH, RENDERING_LABELS, figure, layer_heatmap, layer_shares, save_figure, tower_split_note

TASK_NAMES = {"mc": "MC", "generation": "ROUGE-L", "cloze": "cloze"}
RENDERING_NAMES = {"image_text": "img+txt", "text_only": "text"}


# ------------------------------------------------------------------------------------------------- tables
def paper_table(results, costs: dict | None = None):
    """Rows = methods; columns = set × task × rendering in percent (the paper's layout), then cost columns."""
    import pandas as pd

    table = Results(results).table()
    columns = [c for c in ((s, t, r) for s in SETS for t in TASKS for r in RENDERINGS) if c in table.columns]
    table = table[columns]
    table.columns = [f"{s} {TASK_NAMES[t]} {RENDERING_NAMES[r]}" for s, t, r in columns]
    if costs:
        table["unlearn s"] = pd.Series({m: round(c["seconds"], 1) for m, c in costs.items()})
        table["peak MB"] = pd.Series({m: round(c["peak_rss_mb"], 1) for m, c in costs.items()})
    return table


def summary_table(summary: dict):
    """One row per method: drops per set and rendering, balance, cost, relearning, membership inference."""
    import pandas as pd

    rows = {}
    for method, row in summary["methods"].items():
        flat = {f"Δ{s} {RENDERING_NAMES[r]}": round(v, 1) for s, per in row["drops"].items() for r, v in per.items()}
        flat["balance"] = round(row["balance"], 1)
        cost = row.get("cost") or {}  # the retain model was trained, not unlearned: no cost
        flat["unlearn s"] = round(cost["seconds"], 1) if cost else None
        flat["peak MB"] = round(cost["peak_rss_mb"], 1) if cost else None
        flat["forget %"] = round(100 * row["forget_score"], 1)
        for source in ("forget", "retain"):
            score = row.get("relearn_forget_score", {}).get(source)
            flat[f"after relearn({source}) %"] = None if score is None else round(100 * score, 1)
            value = row.get("relearn", {}).get(source)
            flat[f"recovered({source})"] = None if value is None else round(value, 2)
        flat["MIA AUC"] = None if row.get("mia") is None else round(row["mia"]["auc"], 3)
        for r, value in row.get("distance_to_retain", {}).items():
            flat[f"dist→retain {RENDERING_NAMES[r]}"] = round(value, 1)
        for r, cell in row.get("vs_retain", {}).items():
            name = RENDERING_NAMES[r]
            if "forget_quality" in cell:
                flat[f"forget quality {name}"] = float(f"{cell['forget_quality']:.3g}")
            for attack in ("loss", "min_k_pp"):
                if attack in cell.get("privleak", {}):
                    flat[f"privleak {attack} {name}"] = round(cell["privleak"][attack], 1)
        for r, cell in row.get("unlearning", {}).items():
            name = RENDERING_NAMES[r]
            if "truth_ratio" in cell:
                flat[f"truth ratio {name}"] = round(cell["truth_ratio"], 3)
            flat[f"extraction {name}"] = round(cell["extraction_strength"], 3)
            if "collapse" in cell:
                flat[f"collapse {name}"] = round(cell["collapse"]["share"], 2)
        rows[method] = flat
    return pd.DataFrame.from_dict(rows, orient="index")


def write_table(table, path: Path) -> None:
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp)
    with atomic_path(path.with_suffix(".md")) as tmp:
        Path(tmp).write_text(table.to_markdown() + "\n")


# ------------------------------------------------------------------------------------------------ figures
def plot_tradeoff(points: list[dict], path, target: dict | None = None) -> Path:
    """Forget drop vs retain drop (points, mean over tasks), one panel per rendering, one curve per family.

    ``points``: sweep points of :func:`manu_lite.compare.run_sweeps` (``label, family, param, x, drops``); each
    curve follows its knob (alpha or steps), annotated at every point. Upper left is better: much forgotten,
    little retain loss. The dotted line marks the 5-point retain budget. ``target``: the retain model's drops
    (``{set: {rendering: points}}``), drawn as a star: where unlearning should land.
    """
    fig, axes = figure(PAGE_WIDTH, 3.9, layout="tight", nrows=1, ncols=2, sharey=True)  # page width: legible
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
        if target and rendering in target.get("forget", {}) and rendering in target.get("retain", {}):
            ax.plot([target["retain"][rendering]], [target["forget"][rendering]], "*", color="black", markersize=12,
                    label="retain model (target)")
        ax.axvline(5, color="grey", linestyle=":", linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_title(f"{RENDERING_LABELS[rendering]} (numbers: alpha % or steps)")
        ax.set_xlabel("retain drop (points)")
    axes[0].set_ylabel("forget drop (points)")
    axes[1].legend(fontsize=7, loc="best")
    data = [{k: p[k] for k in ("label", "family", "param", "x", "drops")} for p in points]
    return save_figure(fig, path, data + ([{"label": "retain model (target)", "drops": target}] if target else []))


def plot_balance(summary: dict, path) -> Path:
    """Forget drop per rendering for each method, and the modality balance |Δ(image+text) − Δ(text-only)|."""
    methods = [m for m in summary["methods"] if m != "Vanilla"]
    forget = {m: summary["methods"][m]["drops"]["forget"] for m in methods}
    imbalance = {m: summary["methods"][m]["balance"] for m in methods}
    fig, (left, right) = figure(PAGE_WIDTH, 3.4, layout="tight", nrows=1, ncols=2, gridspec_kw={"width_ratios": [2, 1]})
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
    return save_figure(fig, path, {"forget_drop": forget, "balance": imbalance})


def plot_pruned_heatmap(masks: dict[str, dict], path) -> Path:
    """Share of neurons pruned per layer (rows: vision layers, then language layers) for each mask (columns).

    ``masks``: label → :meth:`manu_lite.prune.NeuronMask.summary` (its ``per_site`` counts). Cells show the
    percentage and the count; :func:`manu_lite.viz.layer_heatmap` draws it (a tower line only when both towers have
    rows, a slim colour bar).
    """
    sites = layer_shares(masks)[0]
    fig = layer_heatmap(masks, title=f"pruned neurons per layer ({tower_split_note(sites)})", counts=True)
    return save_figure(fig, path, {"sites": sites, "masks": masks})


def plot_robustness(summary: dict, path) -> Path:
    """Relearning attack (forget score after unlearning and after each attack) and membership-inference AUC."""
    rows = summary["methods"]
    methods = list(rows)
    fig, (left, right) = figure(PAGE_WIDTH, 3.4, layout="tight", nrows=1, ncols=2, gridspec_kw={"width_ratios": [2, 1]})
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

    return save_figure(fig, path, {**{name: finite(values) for name, values in series.items()}, "mia_auc": finite(aucs)})


def with_mmmu(table, mmmu):
    """``table`` (rows = methods) plus ``MMMU %``, each method's overall accuracy in ``mmmu`` (set="mmmu")."""
    overall = {r["method"]: round(100 * r["value"], 1) for r in mmmu if r["task"] == "overall"}
    return table.assign(**{"MMMU %": [overall.get(m) for m in table.index]}) if overall else table
