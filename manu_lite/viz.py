"""The book's figures, drawn on bare :class:`matplotlib.figure.Figure` objects (no pyplot state), so they never
depend on, or change, a notebook's matplotlib backend.

Two kinds: the chapters' figures (returned, shown with :func:`show`) and the comparison's figures, written as
PNG next to the JSON of the data they show (``plot_*``).

**The colour rule, the same in every figure** (:func:`style` is its one implementation): the *set* gives the colour
(red forget, blue retain, light red test, green celebrity); the *rendering* gives the line and the fill (image+text
solid and filled, text-only dashed and hatched). A figure that shows renderings alone colours them purple
(image+text) and ochre (text-only). Figures are at most :data:`PAGE_WIDTH` inches wide, so that they show at
(almost) full size in the book's column and their labels stay legible.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .artifacts import atomic_path, write_json
from .config import RENDERINGS

FORGET, RETAIN = "#c0392b", "#2e6fb5"
IMAGE_TEXT, TEXT_ONLY = "#7b3fa0", "#c79a1e"
RENDERING_COLOURS = {"image_text": IMAGE_TEXT, "text_only": TEXT_ONLY}
SET_COLOURS = {"forget": FORGET, "retain": RETAIN, "test": "#e67e5f", "celebrity": "#5a9e6f"}
TOWER_COLOURS = {"language": "#333333", "vision": "#1b9e77"}
RENDERING_LABELS = {"image_text": "image+text", "text_only": "text-only"}
TASK_LABELS = {"mc": "multiple choice (acc.)", "generation": "generation (ROUGE-L)", "cloze": "cloze (acc.)"}
PAGE_WIDTH = 7.5  # inches: at the book's 100 dpi a figure is 750 px, the width of the text column at 1280 px
DPI = 100


def style(set_name: str | None = None, rendering: str | None = None) -> dict:
    """Matplotlib keyword arguments of the book's colour rule for a series of ``set_name`` in ``rendering``;
    :func:`line_style` and :func:`bar_style` keep the ones ``ax.plot`` and ``ax.bar`` accept."""
    colour = SET_COLOURS.get(set_name) if set_name else RENDERING_COLOURS.get(rendering, "#555555")
    text_only = rendering == "text_only"
    return {"color": colour, "linestyle": "--" if text_only else "-", "marker": "s" if text_only else "o",
            "markerfacecolor": "white" if text_only else colour, "hatch": "///" if text_only else None}


def line_style(set_name: str | None = None, rendering: str | None = None) -> dict:
    """:func:`style` for ``ax.plot``."""
    return {k: v for k, v in style(set_name, rendering).items() if k != "hatch"}


def bar_style(set_name: str | None = None, rendering: str | None = None) -> dict:
    """:func:`style` for ``ax.bar``: hatched white-edged bars for text-only."""
    s = style(set_name, rendering)
    return {"color": s["color"], "hatch": s["hatch"], "edgecolor": "white" if s["hatch"] else s["color"]}


def glue(name: str, value) -> None:
    """Bind ``value`` to ``name`` for the page's text (``{glue:text}`name:.1f```): the book quotes numbers from the
    run, never types them. Without myst-nb (e.g. on Colab) there is no text to bind to, and nothing happens."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy/torch scalar: the format spec cannot
        value = value.item()                                          # read 'np.float64(...)', so a plain number
    _glue(name, _Text(value) if isinstance(value, str) else value, display=False)


class _Text:
    """A glued string shown as itself (a ``str``'s plain-text form would carry quotes into the sentence)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def glue_figure(name: str, fig) -> None:
    """Bind a figure (or a PNG path) to ``name`` for a numbered ``{glue:figure}`` with a caption in the page's
    text. In a live session, or without myst-nb, the figure is shown here as well."""
    from IPython.display import Image, display

    from .profiles import interactive

    image = Image(filename=str(fig)) if isinstance(fig, (str, Path)) else Image(data=png(fig))
    try:
        from myst_nb import glue as _glue
    except ImportError:
        display(image)
        return
    _glue(name, image, display=interactive())


def table(frame, digits: int = 1, caption: str | None = None):
    """``frame`` for display: floats rounded to ``digits`` (in the display only, the data keep every digit),
    integers as they are, no index name clutter."""
    styler = frame.style.format(precision=digits, na_rep="")
    return styler.set_caption(caption) if caption else styler


# ------------------------------------------------------------------------------------------------ helpers
def figure(width: float, height: float, layout: str | None = "constrained", **subplots):
    """A pyplot-free figure of ``width`` × ``height`` inches. With subplot arguments (``nrows``, ``ncols``,
    ``squeeze``, ``sharey``, ``gridspec_kw``, ...) returns ``(fig, axes)`` like ``plt.subplots``; without, the
    bare figure (for a custom grid)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    return (fig, fig.subplots(**subplots)) if subplots else fig


def png(fig, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig, dpi: int = DPI) -> None:
    """Display a figure (or a PNG path) as an image in the notebook, independent of the matplotlib backend."""
    from IPython.display import Image, display

    if isinstance(fig, (str, Path)):
        display(Image(filename=str(fig)))
    else:
        display(Image(data=png(fig, dpi)))


def save_figure(fig, path, data) -> Path:
    """Save ``fig`` as PNG (atomically) and ``data`` as JSON beside it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    write_json(path.with_suffix(".json"), data)
    return path


# --------------------------------------------------------------------------------- 01: the world
def portrait_grid(records: Sequence, cols: int = 8, title: str | None = None, highlight: set[str] = frozenset()):
    """Portraits with names; records whose id is in ``highlight`` get a red frame (e.g. the forget people)."""
    rows = max(1, -(-len(records) // cols))
    side = min(1.35, PAGE_WIDTH / cols)
    fig, axes = figure(side * cols, (side + 0.3) * rows, nrows=rows, ncols=cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, record in zip(axes.flat, records):
        ax.imshow(record.image)
        name = record.name or record.id
        ax.set_title(name.replace(" ", "\n", 1), fontsize=7, color=FORGET if record.id in highlight else "black")
        if record.id in highlight:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(FORGET)
                spine.set_linewidth(2.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def test_set_images(record, label: str = ""):
    """A person's portrait next to the transformed images of the Test_Set."""
    images = [record.image, *record.images]
    side = min(1.6, PAGE_WIDTH / len(images))
    fig, axes = figure(side * len(images), side + 0.3, ncols=len(images), squeeze=False)
    for k, (ax, image) in enumerate(zip(axes[0], images)):
        ax.imshow(image)
        ax.axis("off")
        ax.set_title("Full_Set" if k == 0 else f"Test_Set #{k}", fontsize=7)
    if label:
        fig.suptitle(label, fontsize=8)
    return fig


# --------------------------------------------------------------------------------- 02: activations
def activation_comparison(stats: Mapping[str, Mapping[str, "object"]], sites: Sequence[str]):
    """Mean |activation| per neuron, image+text against text-only, one panel per language site, plus the vision
    sites' token counts per rendering. ``stats``: ``{rendering: StatsTable}`` of the same questions."""
    language = [s for s in sites if s.startswith("language")]
    vision = [s for s in sites if s.startswith("vision")]
    panels = len(language) + 1
    cols = min(panels, 3)
    rows = -(-panels // cols)
    fig, axes = figure(PAGE_WIDTH, 2.7 * rows, nrows=rows, ncols=cols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.axis("off")
    for ax, site in zip(flat, language):
        x = stats["image_text"][site].mean_abs.numpy()
        y = stats["text_only"][site].mean_abs.numpy()
        r = float(torch.corrcoef(torch.stack([torch.as_tensor(x), torch.as_tensor(y)]))[0, 1])
        ax.scatter(x, y, s=6, alpha=0.6, color=TOWER_COLOURS["language"])
        top = max(x.max(), y.max()) * 1.05
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("mean |a|, image+text", color=IMAGE_TEXT)
        ax.set_ylabel("mean |a|, text-only", color=TEXT_ONLY)
        ax.set_title(f"{site}\n(r = {r:.2f})", fontsize=9)
    ax = flat[len(language)]
    counts = {r: [int(stats[r][s].count) for s in vision] for r in RENDERINGS}
    width = 0.4
    for k, rendering in enumerate(RENDERINGS):
        ax.bar([i + k * width for i in range(len(vision))], counts[rendering], width, **bar_style(rendering=rendering),
               label=RENDERING_LABELS[rendering])
    ax.set_xticks([i + width / 2 for i in range(len(vision))])
    ax.set_xticklabels([v.replace("_proj", "").replace(".fc2", "") for v in vision], fontsize=8)
    ax.set_ylabel("patches recorded")
    ax.set_title("vision tower:\nruns on image+text only", fontsize=9)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------- 03: importance
def score_distributions(scores: Mapping[str, Mapping[str, torch.Tensor]], selected: Mapping[str, Mapping] | None = None):
    """Histograms of neuron scores (log x), one panel per formulation, one colour per tower; the dashed line is the
    selection threshold when ``selected`` (formulation → site → indices) is given."""
    from matplotlib.ticker import NullFormatter

    fig, axes = figure(PAGE_WIDTH, 2.9, ncols=len(scores), squeeze=False)
    for ax, (formulation, per_site) in zip(axes[0], scores.items()):
        for tower, colour in TOWER_COLOURS.items():
            if not any(n.startswith(tower) for n in per_site):
                continue
            values = torch.cat([s.double() for n, s in per_site.items() if n.startswith(tower)])
            shift = values.min().clamp(max=0).abs() + 1e-3  # the reference score can be negative (ratio - 1)
            shifted = (values + shift).clamp_min(1e-6)
            bins = torch.logspace(float(shifted.min().log10()), float(shifted.max().log10()) + 1e-9, 50)
            ax.hist(shifted.numpy(), bins=bins.numpy(), alpha=0.6, color=colour, label=f"{tower} ({len(values)})")
            if selected and formulation in selected:
                chosen = [per_site[n][idx] for n, idx in selected[formulation].items() if n.startswith(tower) and len(idx)]
                if chosen:
                    ax.axvline(float(torch.cat(chosen).min() + shift), color=colour, linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("score" + (" + offset (can be < 0)" if formulation == "reference" else ""))
        ax.set_ylabel("neurons")
        ax.set_title(f"formulation = {formulation!r}", fontsize=9)
        ax.legend(fontsize=8)
    return fig


def paper_components_figure(components: Mapping[str, Mapping[str, torch.Tensor]], site: str):
    """The paper's four contrasts I_abs, I_freq, I_var, I_rms of one site, forget (red) vs retain (blue)."""
    fig, axes = figure(PAGE_WIDTH, 4.6, nrows=2, ncols=2, squeeze=False)
    for ax, key in zip(axes.flat, ("abs", "freq", "var", "rms")):
        for dataset in ("forget", "retain"):
            ax.hist(components[dataset][key].numpy(), bins=40, alpha=0.55, color=SET_COLOURS[dataset], label=dataset)
        ax.set_title(f"$I_{{{key}}}$", fontsize=10)
        ax.set_ylabel("neurons")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"the paper's four terms of {site}", fontsize=10)
    return fig


def overlap_figure(rows: Sequence[Mapping]):
    """The renderings' top-set overlap against chance, per alpha (rows of
    :func:`manu_lite.experiments.overlap_curve`)."""
    fig, ax = figure(5.6, 3.2, nrows=1)
    ax.plot([r["alpha"] for r in rows], [100 * r["overlap"] for r in rows], "-o", color=TOWER_COLOURS["language"],
            label="top-α(image+text) ∩ top-α(text-only)")
    ax.plot([r["alpha"] for r in rows], [100 * r["chance"] for r in rows], ":", color="grey",
            label="expected by chance (α %)")
    ax.set_xlabel("α (% of language neurons)")
    ax.set_ylabel("% of the top set shared")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Do the two renderings pick the same neurons?", fontsize=10)
    return fig


def layer_shares(summaries: Mapping[str, Mapping]) -> tuple[list[str], list[str], list[list[float]]]:
    """(sites, labels, grid[site][label] = % of the site's neurons selected) from mask/selection summaries."""
    labels = list(summaries)
    sites = sorted({s for m in summaries.values() for s in m["per_site"]},
                   key=lambda s: (s.split(".")[0] != "vision", int(s.split(".")[1])))
    grid = [[100 * summaries[l]["per_site"].get(s, {}).get("selected", 0)
             / max(1, summaries[l]["per_site"].get(s, {}).get("of", 0)) for l in labels] for s in sites]
    return sites, labels, grid


def tower_split_note(sites: Sequence[str]) -> str:
    """What a heatmap's rows are: 'vision above the line, language below' only when both towers have rows."""
    vision = sum(s.startswith("vision") for s in sites)
    if 0 < vision < len(sites):
        return "vision layers above the line, language below"
    return "language layers only" if not vision else "vision layers only"


def layer_heatmap(summaries: Mapping[str, Mapping], title: str = "share of each layer's neurons selected", ax=None,
                  counts: bool = False, colorbar: bool = True):
    """Heatmap: rows = sites (vision, then language), columns = selections (e.g. formulations or alphas). Cells
    show the percentage (and, with ``counts``, the number of neurons). A line separates the towers only when both
    have rows; the colour bar is as tall as the heatmap and thin."""
    sites, labels, grid = layer_shares(summaries)
    fig = None
    if ax is None:
        fig, ax = figure(min(PAGE_WIDTH, 2.4 + 0.9 * len(labels)), 1.2 + 0.42 * len(sites), nrows=1)
    peak = max(max(row) for row in grid) or 1.0
    image = ax.imshow(grid, cmap="Reds", aspect="auto", vmin=0, vmax=peak)
    for i, site in enumerate(sites):
        for j, label in enumerate(labels):
            text = f"{grid[i][j]:.0f}%"
            if counts:
                text += f"\n{summaries[label]['per_site'].get(site, {}).get('selected', 0)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if grid[i][j] > 0.6 * peak else "black")
    vision_rows = sum(s.startswith("vision") for s in sites)
    if 0 < vision_rows < len(sites):
        ax.axhline(vision_rows - 0.5, color="black", linewidth=1.5)
    ax.set_yticks(range(len(sites)))
    ax.set_yticklabels(sites, fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30 if max(len(l) for l in labels) > 6 else 0,
                       ha="right" if max(len(l) for l in labels) > 6 else "center")
    ax.set_title(title, fontsize=8)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.03, shrink=0.9)
        bar.set_label("% of the layer", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return fig if fig is not None else ax


# --------------------------------------------------------------------------------- 04: the alpha sweep
def sweep_figure(sweep):
    """Static view of a sweep: one panel per task, score against alpha for forget/retain × rendering, and the
    share of each layer pruned at every alpha (2 × 2 panels at page width)."""
    frame = sweep.frame
    tasks = list(dict.fromkeys(frame["task"]))
    fig, axes = figure(PAGE_WIDTH, 6.2, nrows=2, ncols=2, squeeze=False)
    flat = list(axes.flat)
    for k, (ax, task) in enumerate(zip(flat, tasks)):
        for set_name in ("forget", "retain"):
            for rendering in RENDERINGS:
                sub = frame[(frame.task == task) & (frame.set == set_name) & (frame.rendering == rendering)]
                sub = sub.sort_values("alpha")
                ax.plot(sub["alpha"], 100 * sub["value"], markersize=4, **line_style(set_name, rendering),
                        label=f"{set_name}, {RENDERING_LABELS[rendering]}")
        ax.set_title(TASK_LABELS.get(task, task), fontsize=9)
        ax.set_xlabel("α (% of neurons pruned)")
        ax.set_ylim(-3, 103)
        ax.set_ylabel("%")
        if k == 0:
            ax.legend(fontsize=7, loc="lower left")
    summaries = {f"{a:g}": m for a, m in sweep.masks.items()}
    layer_heatmap(summaries, title=f"% of each layer pruned, per α\n({tower_split_note(layer_shares(summaries)[0])})",
                  ax=flat[len(tasks)])  # three tasks, the fourth panel holds the heatmap
    return fig


def point_figure(sweep, alpha: float):
    """Bars at one alpha: per task, forget/retain × rendering, vanilla as a dotted outline; plus the layer shares."""
    frame = sweep.frame
    tasks = list(dict.fromkeys(frame["task"]))
    fig, axes = figure(PAGE_WIDTH, 6.0, nrows=2, ncols=2, squeeze=False)
    flat = list(axes.flat)
    groups = [(s, r) for s in ("forget", "retain") for r in RENDERINGS]
    for ax, task in zip(flat, tasks):
        for g, (set_name, rendering) in enumerate(groups):
            pick = (frame.task == task) & (frame.set == set_name) & (frame.rendering == rendering)
            now = 100 * frame[pick & (frame.alpha == alpha)]["value"].mean()
            before = 100 * frame[pick & (frame.alpha == 0)]["value"].mean()
            ax.bar(g, now, **bar_style(set_name, rendering))
            ax.bar(g, before, fill=False, edgecolor="black", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{s}\n{RENDERING_LABELS[r]}" for s, r in groups], fontsize=7)
        ax.set_ylim(0, 105)
        ax.set_title(TASK_LABELS.get(task, task), fontsize=9)
    fig.suptitle(f"α = {alpha:g} % pruned (dotted: vanilla)", fontsize=10)
    layer_heatmap({f"α={alpha:g}": sweep.masks[alpha]}, title="% of layer pruned", ax=flat[len(tasks)])
    return fig


# ------------------------------------------------------------------------------------ 05: the comparison
def plot_results(results, path) -> Path:
    """Bars per set × rendering for each task (one row of panels per task), one colour per method, text-only
    groups hatched; also writes the data as JSON."""
    from matplotlib import colormaps

    frame = results.frame()
    tasks = list(dict.fromkeys(frame["task"]))
    methods = list(dict.fromkeys(frame["method"]))
    palette = colormaps["tab10"]
    colours = {m: ("#9e9e9e" if m.lower() == "vanilla" else palette(k % 10)) for k, m in enumerate(methods)}
    fig, axes = figure(PAGE_WIDTH, 2.3 * len(tasks) + 0.4, layout="tight", nrows=len(tasks), ncols=1, sharex=True,
                       squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        sub = frame[frame["task"] == task]
        groups = list(dict.fromkeys(zip(sub["set"], sub["rendering"])))
        width = 0.8 / len(methods)
        for m, method in enumerate(methods):
            values = [100 * sub[(sub["method"] == method) & (sub["set"] == s) & (sub["rendering"] == r)]["value"].mean()
                      for s, r in groups]
            ax.bar([g + m * width for g in range(len(groups))], values, width, color=colours[method],
                   hatch=["///" if r == "text_only" else None for _, r in groups], edgecolor="white",
                   label=method)
        ax.set_xticks([g + width * (len(methods) - 1) / 2 for g in range(len(groups))])
        ax.set_xticklabels([f"{s}\n{RENDERING_LABELS[r]}" for s, r in groups], fontsize=8)
        ax.set_title(f"{TASK_LABELS.get(task, task)}", fontsize=9)
        ax.set_ylim(0, 105)
        ax.set_ylabel("%")
    axes[0][0].legend(fontsize=7, ncols=min(4, len(methods)), loc="upper left", bbox_to_anchor=(0, 1.45))
    return save_figure(fig, path, list(results))
