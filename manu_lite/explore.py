"""What the book's notebooks call besides the method itself: the profile's world and model, notebook figures, and
ipywidgets explorers that fall back to static figures.

Figures are built on :class:`matplotlib.figure.Figure` objects (no pyplot state), so they never depend on, or
change, the notebook's matplotlib backend; :func:`show` displays one as a PNG. An explorer always shows its static
figure (the executed book is read without a kernel, so a widget there would be dead) and adds the widget only when
:func:`interactive` finds a live, human-driven kernel (Jupyter, Colab).

Colours follow the book: red forget, blue retain, purple image+text, ochre text-only.
"""
from __future__ import annotations

import dataclasses
import io
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .config import RENDERINGS, Profile, ManuConfig
from .data import World

FORGET, RETAIN = "#c0392b", "#2e6fb5"
IMAGE_TEXT, TEXT_ONLY = "#7b3fa0", "#c79a1e"
RENDERING_COLOURS = {"image_text": IMAGE_TEXT, "text_only": TEXT_ONLY}
SET_COLOURS = {"forget": FORGET, "retain": RETAIN, "test": "#e67e5f", "celebrity": "#5a9e6f"}
RENDERING_LABELS = {"image_text": "image+text", "text_only": "text-only"}
TASK_LABELS = {"mc": "multiple choice (acc.)", "generation": "generation (ROUGE-L)", "cloze": "cloze (acc.)"}


# ------------------------------------------------------------------------------------------ profile glue
def book_workdir() -> Path:
    """Where notebooks write the synthetic bench and their outputs: ``$MANU_LITE_CACHE/book`` (default
    ``~/.cache/manu_lite/book``). The tiny world is deterministic, so every notebook (and the CLI) trains and then
    reuses the same cached vanilla model."""
    from .finetune import cache_dir

    return cache_dir() / "book"


def profile_world(profile: Profile, forget: str | None = None, max_retain: int | None = None) -> World:
    """The world of a profile: the synthetic bench (``tiny``) or MLLMU-Bench from the hub (``colab``/``full``)."""
    forget = forget or profile.forget_split
    if profile.data == "synthetic":
        from .workflow import tiny_world

        return tiny_world(book_workdir() / f"tiny-{_generator_digest()}", forget).with_retain_sample(max_retain)
    from .data import load_world

    return load_world(profile.data, forget, max_retain=max_retain)


def _generator_digest() -> str:
    """A short hash of the synthetic generator's source: a changed generator writes a fresh world directory
    instead of reusing one written by an older version."""
    import hashlib

    from . import data, workflow

    digest = hashlib.sha256()
    for module in (data, workflow):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def profile_model(profile: Profile, world: World | None = None, progress: bool | None = None):
    """The vanilla model of a profile: ``(model, processor, adapter)``.

    ``tiny``: the tiny LLaVA trained on ``world`` (trained once, then loaded from the cache). Otherwise the
    profile's checkpoint (e.g. ``MLLMMU/LLaVA_Vanilla``) in its dtype, 4-bit where the profile says so, spread over
    the available GPUs. ``progress=None`` shows progress bars only in a live session (:func:`interactive`): in a
    saved notebook a bar is frozen at its first state.
    """
    if progress is None:
        progress = interactive()
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if profile.model == "tiny":
        if world is None:
            raise ValueError("the tiny model is trained on a world: pass world=profile_world(profile)")
        from .workflow import tiny_vanilla

        return tiny_vanilla(world, progress=progress)
    from .models import load_mllm

    return load_mllm(profile.model, dtype=profile.dtype, load_in_4bit=profile.load_in_4bit, device_map="auto")


def profile_eval(profile: Profile, **overrides):
    """The evaluation settings of a profile: the tiny model's (bare questions, short answers) or the benchmark's."""
    from .evaluate import EvalConfig
    from .workflow import TINY_EVAL

    base = TINY_EVAL if profile.model == "tiny" else EvalConfig(batch_size=profile.batch_size)
    return dataclasses.replace(base, **overrides)


def profile_manu(profile: Profile) -> ManuConfig:
    """MANU's settings for a profile: on ``tiny`` the tuned ones of :data:`manu_lite.workflow.TINY_MANU` (language
    MLPs, alpha 30: the best forget/retain trade-off found on the tiny world); elsewhere the paper's defaults."""
    if profile.model == "tiny":
        from .workflow import TINY_MANU

        return TINY_MANU
    return ManuConfig()


def results_frame(results):
    """Scores in percent, rows (set, task), columns (method, rendering): a compact view of
    :class:`~manu_lite.evaluate.Results` for a notebook."""
    frame = results.frame()
    frame["value"] = 100 * frame["value"]
    table = frame.pivot_table(index=["set", "task"], columns=["method", "rendering"], values="value", sort=False)
    return table.round(1)


def subsample(world: World, retain: int | None, seed: int = 0) -> World:
    """``world`` with a seeded subsample of ``retain`` retain people (sweeps evaluate fewer people)."""
    return world.with_retain_sample(retain, seed)


# ------------------------------------------------------------------------------------------- display
_HEADLESS_PARENTS = ("jupyter-book", "sphinx", "papermill", "nbconvert", "nbclient", "nbmake", "pytest")


def _parent_cmdline() -> str:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def interactive() -> bool:
    """True when a person drives this kernel (Colab, Jupyter, VS Code); False in plain Python and when a tool
    executes the notebook unattended (the book build, papermill, nbconvert, nbmake), whose saved outputs are read
    without a kernel. ``MANU_LITE_STATIC=1`` forces False, ``MANU_LITE_STATIC=0`` forces True."""
    forced = os.environ.get("MANU_LITE_STATIC")
    if forced in ("0", "1"):
        return forced == "0"
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    if "google.colab" in sys.modules:
        return True
    parent = _parent_cmdline()
    return not any(name in parent for name in _HEADLESS_PARENTS)


def figure(width: float, height: float, **kwargs):
    """A pyplot-free figure: ``(fig, axes)`` like ``plt.subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**kwargs)


def png(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig, dpi: int = 110) -> None:
    """Display a figure (or a PNG path) as an image in the notebook, independent of the matplotlib backend."""
    from IPython.display import Image, display

    if isinstance(fig, (str, Path)):
        display(Image(filename=str(fig)))
    else:
        display(Image(data=png(fig, dpi)))


def pct_table(frame, caption: str | None = None):
    """A DataFrame of fractions shown as percentages with one decimal (a styled HTML table)."""
    styler = frame.style.format(lambda v: "" if v != v else f"{100 * v:.1f}")
    return styler.set_caption(caption) if caption else styler


# --------------------------------------------------------------------------------- 01: the world
def portrait_grid(records: Sequence, cols: int = 8, title: str | None = None, highlight: set[str] = frozenset()):
    """Portraits with names; records whose id is in ``highlight`` get a red frame (e.g. the forget people)."""
    rows = max(1, -(-len(records) // cols))
    fig, axes = figure(1.35 * cols, 1.6 * rows, nrows=rows, ncols=cols, squeeze=False)
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
    fig, axes = figure(1.6 * len(images), 1.9, ncols=len(images), squeeze=False)
    for k, (ax, image) in enumerate(zip(axes[0], images)):
        ax.imshow(image)
        ax.axis("off")
        ax.set_title("Full_Set" if k == 0 else f"Test_Set #{k}", fontsize=7)
    if label:
        fig.suptitle(label, fontsize=8)
    return fig


def questions_frame(record):
    """Every question of an evaluation-format record: task, rendering, question, options, answer."""
    import pandas as pd

    rows = []
    for rendering in RENDERINGS:
        for q in record.mc.get(rendering, []):
            options = "  ".join(f"{k}: {v}" for k, v in q.options.items())
            rows.append(("mc", rendering, q.question, options, q.answer))
        for task in ("generation", "cloze"):
            for q in getattr(record, task).get(rendering, []):
                rows.append((task, rendering, q.question, "", q.answer))
    return pd.DataFrame(rows, columns=["task", "rendering", "question", "options", "answer"])


def schema_frame(schema, max_depth: int = 4):
    """A pyarrow schema as one row per leaf field: dotted path (``[]`` marks a list) and type."""
    import pandas as pd
    import pyarrow as pa

    rows = []

    def walk(name, dtype, depth):
        if pa.types.is_struct(dtype) and depth < max_depth:
            for child in dtype:
                walk(f"{name}.{child.name}", child.type, depth + 1)
        elif pa.types.is_list(dtype) and depth < max_depth:
            walk(f"{name}[]", dtype.value_type, depth + 1)
        else:
            rows.append({"field": name, "type": str(dtype)})

    for field in schema:
        walk(field.name, field.type, 0)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- 02: activations
def activation_comparison(stats: Mapping[str, Mapping[str, "object"]], sites: Sequence[str]):
    """Mean |activation| per neuron, image+text against text-only, one panel per language site, plus the vision
    sites' token counts per rendering. ``stats``: ``{rendering: StatsTable}`` of the same questions."""
    language = [s for s in sites if s.startswith("language")]
    vision = [s for s in sites if s.startswith("vision")]
    fig, axes = figure(3.6 * (len(language) + 1), 3.4, ncols=len(language) + 1, squeeze=False)
    for ax, site in zip(axes[0], language):
        x = stats["image_text"][site].mean_abs.numpy()
        y = stats["text_only"][site].mean_abs.numpy()
        r = float(torch.corrcoef(torch.stack([torch.as_tensor(x), torch.as_tensor(y)]))[0, 1])
        ax.scatter(x, y, s=6, alpha=0.6, color="#555")
        top = max(x.max(), y.max()) * 1.05
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("mean |a|, image+text", color=IMAGE_TEXT)
        ax.set_ylabel("mean |a|, text-only", color=TEXT_ONLY)
        ax.set_title(f"{site}  (r = {r:.2f})", fontsize=8)
    ax = axes[0][-1]
    counts = {r: [int(stats[r][s].count) for s in vision] for r in RENDERINGS}
    width = 0.4
    for k, rendering in enumerate(RENDERINGS):
        ax.bar([i + k * width for i in range(len(vision))], counts[rendering], width, color=RENDERING_COLOURS[rendering],
               label=RENDERING_LABELS[rendering])
    ax.set_xticks([i + width / 2 for i in range(len(vision))])
    ax.set_xticklabels(vision, fontsize=7)
    ax.set_ylabel("patches recorded")
    ax.set_title("vision tower: runs on image+text only", fontsize=8)
    ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------------- 03: importance
def score_distributions(scores: Mapping[str, Mapping[str, torch.Tensor]], selected: Mapping[str, Mapping] | None = None):
    """Histograms of neuron scores (log x), one panel per formulation, one colour per tower; the dashed line is the
    selection threshold when ``selected`` (formulation → site → indices) is given."""
    fig, axes = figure(5.0 * len(scores), 3.2, ncols=len(scores), squeeze=False)
    for ax, (formulation, per_site) in zip(axes[0], scores.items()):
        for tower, colour in (("language", "#333"), ("vision", "#1b9e77")):
            values = torch.cat([s.double() for n, s in per_site.items() if n.startswith(tower)]) if any(
                n.startswith(tower) for n in per_site) else None
            if values is None:
                continue
            shift = values.min().clamp(max=0).abs() + 1e-3  # the reference score can be negative (ratio - 1)
            shifted = (values + shift).clamp_min(1e-6)
            bins = torch.logspace(float(shifted.min().log10()), float(shifted.max().log10()) + 1e-9, 50)
            ax.hist(shifted.numpy(), bins=bins.numpy(), alpha=0.6, color=colour, label=f"{tower} ({len(values)})")
            if selected and formulation in selected:
                chosen = [per_site[n][idx] for n, idx in selected[formulation].items() if n.startswith(tower) and len(idx)]
                if chosen:
                    ax.axvline(float(torch.cat(chosen).min() + shift), color=colour, linestyle="--", linewidth=1)
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("score" + (" + offset (it can be negative)" if formulation == "reference" else ""))
        ax.set_ylabel("neurons")
        ax.set_title(f"formulation = {formulation!r}", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def paper_components_figure(components: Mapping[str, Mapping[str, torch.Tensor]], site: str):
    """The paper's four contrasts I_abs, I_freq, I_var, I_rms of one site, forget (red) vs retain (blue)."""
    fig, axes = figure(13, 2.8, ncols=4, squeeze=False)
    for ax, key in zip(axes[0], ("abs", "freq", "var", "rms")):
        for dataset, colour in (("forget", FORGET), ("retain", RETAIN)):
            ax.hist(components[dataset][key].numpy(), bins=40, alpha=0.55, color=colour, label=dataset)
        ax.set_title(f"I_{key}  ({site})", fontsize=8)
        ax.set_xlabel("value")
    axes[0][0].set_ylabel("neurons")
    axes[0][0].legend(fontsize=7)
    return fig


def overlap_curve(per_rendering: Mapping[str, Mapping[str, torch.Tensor]], alphas: Sequence[float]):
    """Overlap of the per-rendering top-alpha sets (language neurons) against the overlap expected by chance.

    Returns ``(fig, rows)``: rows are dicts ``alpha, k, shared, overlap, chance``; overlap = shared / k."""
    from .importance import select_neurons

    image_text, text_only = per_rendering["image_text"], per_rendering["text_only"]
    names = [n for n in image_text if n in text_only and n.startswith("language")]
    total = sum(image_text[n].numel() for n in names)
    rows = []
    for alpha in alphas:
        a = select_neurons({n: image_text[n] for n in names}, alpha)
        b = select_neurons({n: text_only[n] for n in names}, alpha)
        k = sum(len(v) for v in a.values())
        shared = sum(len(set(a[n].tolist()) & set(b[n].tolist())) for n in names)
        rows.append({"alpha": alpha, "k": k, "shared": shared, "overlap": shared / k if k else 0.0,
                     "chance": k / total})
    fig, ax = figure(5.2, 3.2)
    ax.plot([r["alpha"] for r in rows], [100 * r["overlap"] for r in rows], "-o", color="#333",
            label="top-α(image+text) ∩ top-α(text-only)")
    ax.plot([r["alpha"] for r in rows], [100 * r["chance"] for r in rows], ":", color="grey",
            label="expected by chance (α %)")
    ax.set_xlabel("α (% of language neurons)")
    ax.set_ylabel("% of the top set shared")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("Do the two renderings pick the same neurons?", fontsize=9)
    return fig, rows


def layer_shares(summaries: Mapping[str, Mapping]) -> tuple[list[str], list[str], list[list[float]]]:
    """(sites, labels, grid[site][label] = % of the site's neurons selected) from mask/selection summaries."""
    labels = list(summaries)
    sites = sorted({s for m in summaries.values() for s in m["per_site"]},
                   key=lambda s: (s.split(".")[0] != "vision", int(s.split(".")[1])))
    grid = [[100 * summaries[l]["per_site"].get(s, {}).get("selected", 0)
             / max(1, summaries[l]["per_site"].get(s, {}).get("of", 0)) for l in labels] for s in sites]
    return sites, labels, grid


def layer_heatmap(summaries: Mapping[str, Mapping], title: str = "share of each layer's neurons selected", ax=None):
    """Heatmap: rows = sites (vision, then language), columns = selections (e.g. formulations or alphas)."""
    sites, labels, grid = layer_shares(summaries)
    fig = None
    if ax is None:
        fig, ax = figure(1.6 + 1.0 * len(labels), 1.0 + 0.42 * len(sites))
    peak = max(max(row) for row in grid) or 1.0
    image = ax.imshow(grid, cmap="Reds", aspect="auto", vmin=0, vmax=peak)
    for i in range(len(sites)):
        for j in range(len(labels)):
            ax.text(j, i, f"{grid[i][j]:.1f}%", ha="center", va="center", fontsize=7,
                    color="white" if grid[i][j] > 0.6 * peak else "black")
    vision_rows = sum(s.startswith("vision") for s in sites)
    if 0 < vision_rows < len(sites):
        ax.axhline(vision_rows - 0.5, color=RETAIN, linewidth=2)
    ax.set_yticks(range(len(sites)))
    ax.set_yticklabels(sites, fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_title(title, fontsize=8)
    if fig is not None:
        fig.colorbar(image, ax=ax, label="% of the layer")
    return fig if fig is not None else ax


# --------------------------------------------------------------------------------- 04: the alpha sweep
@torch.no_grad()
def verify_mask(model, mask, batch) -> "object":
    """Check, on one batch, every claim a neuron-removal mask makes; returns a ``pandas.Series`` claim → bool.

    Inside ``mask.applied(model)``: the pruned neurons' activations are exactly 0, their ``down_proj``/``fc2``
    columns and ``gate/up_proj``/``fc1`` rows are zero, and nothing but those rows and columns changed. After the
    block: every parameter is bit-identical to before.
    """
    import pandas as pd

    from .hooks import find_sites, record_neurons
    from .models import model_inputs

    sites = {s.name: s for s in find_sites(model)}
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pruned = {n: i for n, i in mask.indices.items() if len(i)}
    claims = {}
    with mask.applied(model):
        acts = {}
        with record_neurons(model, [sites[n] for n in pruned], lambda s, a: acts.setdefault(s.name, a)):
            model(**model_inputs(batch))
        claims["pruned neurons' activations are exactly 0"] = all(
            float(acts[n][..., i].abs().max()) == 0 for n, i in pruned.items() if n in acts)
        claims["their down_proj / fc2 columns are zero"] = all(
            bool((sites[n].out_module.weight[:, i] == 0).all()) for n, i in pruned.items())
        claims["their gate_proj, up_proj / fc1 rows (and biases) are zero"] = all(
            bool((m.weight[i] == 0).all()) and (m.bias is None or bool((m.bias[i] == 0).all()))
            for n, i in pruned.items() for m in sites[n].in_modules)
        allowed = 0
        for n, i in pruned.items():
            out, ins = sites[n].out_module, sites[n].in_modules
            allowed += len(i) * (out.weight.shape[0] + sum(m.weight.shape[1] + (m.bias is not None) for m in ins))
        changed = sum(int((v != before[k]).sum()) for k, v in model.state_dict().items())
        claims["nothing else changed (changed entries ≤ those rows and columns)"] = 0 < changed <= allowed
    claims["after restore: every parameter bit-identical"] = all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items())
    return pd.Series(claims, name="holds")


@dataclasses.dataclass
class Sweep:
    """An alpha sweep: tidy scores (``alpha, set, rendering, task, value``; alpha 0 = vanilla) and, per alpha,
    the mask summary (neurons selected per site)."""

    frame: object
    masks: dict
    config: dict

    def drops(self):
        """Vanilla minus pruned, in points, mean over tasks: rows alpha, columns (set, rendering)."""
        mean = self.frame.groupby(["alpha", "set", "rendering"])["value"].mean().unstack(["set", "rendering"]) * 100
        return (mean.loc[0] - mean).drop(index=0).round(1)


def alpha_sweep(model, processor, adapter, world: World, stats, alphas: Sequence[float], config: ManuConfig,
                evaluation, retain_people: int | None = 10, progress: bool = False) -> Sweep:
    """Prune the top alpha % for each alpha (one statistics pass, reused), evaluate forget and a retain subsample.

    stats: ``report.stats`` of :func:`~manu_lite.manu.manu_unlearn` (or ``{(dataset, rendering): StatsTable}``).
    evaluation: an :class:`~manu_lite.evaluate.EvalConfig`; only its forget and retain sets are evaluated.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .evaluate import evaluate
    from .hooks import find_sites
    from .importance import select
    from .prune import NeuronMask

    sub = subsample(world, retain_people)
    evaluation = dataclasses.replace(evaluation, sets=("forget", "retain"))
    sites = find_sites(model, config.towers)
    rows = [dict(r, alpha=0.0) for r in evaluate(model, processor, adapter, sub, evaluation, progress=False)]
    masks = {}
    for alpha in tqdm(list(alphas), desc="alpha sweep", disable=not progress):
        point = dataclasses.replace(config, alpha=alpha)
        mask = NeuronMask.from_sites(select(stats, point), sites, mode=point.prune_mode)
        with mask.applied(model):
            rows += [dict(r, alpha=float(alpha)) for r in evaluate(model, processor, adapter, sub, evaluation,
                                                                   progress=False)]
        masks[float(alpha)] = mask.summary()
    frame = pd.DataFrame(rows)[["alpha", "set", "rendering", "task", "value", "n"]]
    return Sweep(frame, masks, config.to_dict())


def custom_selection(stats, score_fn, alpha: float, towers: Sequence[str] = ("language", "vision"),
                     scope: str = "global") -> dict[str, torch.Tensor]:
    """Select with your own per-rendering score ``score_fn(forget: NeuronStats, retain: NeuronStats) -> [width]``:
    one ranking per rendering (sites that saw tokens in both datasets), interleaved as ``selection="union"`` does."""
    from .hooks import site_tower
    from .importance import select_union

    rankings = []
    for rendering in RENDERINGS:
        forget, retain = stats.get(("forget", rendering)), stats.get(("retain", rendering))
        if forget is None or retain is None:
            continue
        ranking = {name: score_fn(forget[name], retain[name]).detach().double() for name in forget
                   if site_tower(name) in towers and name in retain and forget[name].count > 0
                   and retain[name].count > 0}
        if ranking:
            rankings.append(ranking)
    return select_union(rankings, alpha, scope)


def compare_selections(model, processor, adapter, world: World, selections: Mapping[str, Mapping[str, torch.Tensor]],
                       evaluation, retain_people: int | None = 10):
    """Evaluate several selections (label → site → indices) on forget and a retain subsample; returns the drops
    from vanilla in points (mean of the three tasks), rows = labels, columns = (set, rendering)."""
    import pandas as pd

    from .evaluate import evaluate
    from .prune import NeuronMask

    sub = subsample(world, retain_people)
    evaluation = dataclasses.replace(evaluation, sets=("forget", "retain"))
    rows = list(evaluate(model, processor, adapter, sub, evaluation, method="vanilla", progress=False))
    for label, indices in selections.items():
        with NeuronMask(indices).applied(model):
            rows += evaluate(model, processor, adapter, sub, evaluation, method=label, progress=False)
    frame = pd.DataFrame(rows)
    mean = frame.groupby(["method", "set", "rendering"])["value"].mean().unstack(["set", "rendering"]) * 100
    return (mean.loc["vanilla"] - mean).drop(index="vanilla").loc[list(selections)].round(1)


def sweep_figure(sweep: Sweep):
    """Static view of a sweep: one panel per task, score against alpha for forget/retain × rendering, and the
    share of each layer pruned at every alpha."""
    frame = sweep.frame
    tasks = list(dict.fromkeys(frame["task"]))
    fig = _new_figure(4.0 * len(tasks) + 3.6, 3.5)
    grid = fig.add_gridspec(1, len(tasks) + 1, width_ratios=[1] * len(tasks) + [0.95])
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(grid[0, k])
        for set_name in ("forget", "retain"):
            for rendering in RENDERINGS:
                sub = frame[(frame.task == task) & (frame.set == set_name) & (frame.rendering == rendering)]
                sub = sub.sort_values("alpha")
                ax.plot(sub["alpha"], 100 * sub["value"], "-o" if rendering == "image_text" else "--s",
                        color=SET_COLOURS[set_name], markersize=3.5, markerfacecolor=RENDERING_COLOURS[rendering],
                        label=f"{set_name}, {RENDERING_LABELS[rendering]}")
        ax.set_title(TASK_LABELS.get(task, task), fontsize=9)
        ax.set_xlabel("α (% of neurons pruned)")
        ax.set_ylim(-3, 103)
        if k == 0:
            ax.set_ylabel("%")
            ax.legend(fontsize=6.5, loc="lower left")
    layer_heatmap({f"{a:g}": m for a, m in sweep.masks.items()}, title="% of each layer pruned, per α",
                  ax=fig.add_subplot(grid[0, -1]))
    return fig


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _point_figure(sweep: Sweep, alpha: float):
    """Bars at one alpha: per task, forget/retain × rendering, vanilla as a hollow outline; plus the layer shares."""
    frame = sweep.frame
    tasks = list(dict.fromkeys(frame["task"]))
    fig = _new_figure(3.3 * len(tasks) + 2.6, 3.2)
    grid = fig.add_gridspec(1, len(tasks) + 1, width_ratios=[1] * len(tasks) + [0.8])
    groups = [(s, r) for s in ("forget", "retain") for r in RENDERINGS]
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(grid[0, k])
        for g, (set_name, rendering) in enumerate(groups):
            pick = (frame.task == task) & (frame.set == set_name) & (frame.rendering == rendering)
            now = 100 * frame[pick & (frame.alpha == alpha)]["value"].mean()
            before = 100 * frame[pick & (frame.alpha == 0)]["value"].mean()
            ax.bar(g, now, color=SET_COLOURS[set_name], edgecolor=RENDERING_COLOURS[rendering], linewidth=2.5)
            ax.bar(g, before, fill=False, edgecolor="black", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{s}\n{RENDERING_LABELS[r]}" for s, r in groups], fontsize=6.5)
        ax.set_ylim(0, 105)
        ax.set_title(TASK_LABELS.get(task, task), fontsize=8)
    fig.suptitle(f"α = {alpha:g} % pruned (dotted: vanilla)", fontsize=9)
    layer_heatmap({f"α={alpha:g}": sweep.masks[alpha]}, title="% of layer pruned", ax=fig.add_subplot(grid[0, -1]))
    return fig


def alpha_explorer(sweep: Sweep) -> None:
    """Show the sweep: always the static figure; in a live kernel also an alpha slider that redraws the scores of
    the forget and retain sets per rendering and the share of each layer pruned at that alpha."""
    show(sweep_figure(sweep))
    if not interactive():
        return
    import ipywidgets as widgets
    from IPython.display import display

    alphas = sorted(sweep.masks)
    slider = widgets.SelectionSlider(options=alphas, value=alphas[len(alphas) // 2], description="α (%)",
                                     continuous_update=False)
    out = widgets.Output()

    def draw(change=None):
        with out:
            out.clear_output(wait=True)
            show(_point_figure(sweep, slider.value))

    slider.observe(draw, names="value")
    draw()
    display(widgets.VBox([slider, out]))


def heatmap_explorer(selections: Mapping[str, Mapping[str, Mapping]]) -> None:
    """Layer heatmaps of several selections (e.g. formulation → {alpha: summary}); static figure of all of them,
    and in a live kernel a dropdown to look at one at a time."""
    fig = _new_figure(3.2 * len(selections) + 1.0, 0.9 + 0.42 * max(len(next(iter(s.values()))["per_site"])
                                                                      for s in selections.values()))
    axes = fig.subplots(1, len(selections), squeeze=False)[0]
    for ax, (name, summaries) in zip(axes, selections.items()):
        layer_heatmap({f"{a:g}" if isinstance(a, float) else str(a): m for a, m in summaries.items()},
                      title=name, ax=ax)
        ax.set_xlabel("α (%)")
    fig.suptitle("% of each layer's neurons selected, per α (vision above the blue line, language below)", fontsize=9)
    show(fig)
    if not interactive():
        return
    import ipywidgets as widgets
    from IPython.display import display

    choice = widgets.Dropdown(options=list(selections), description="selection")
    out = widgets.Output()

    def draw(change=None):
        with out:
            out.clear_output(wait=True)
            summaries = selections[choice.value]
            show(layer_heatmap({f"{a:g}" if isinstance(a, float) else str(a): m for a, m in summaries.items()},
                               title=f"{choice.value}: % of layer selected, per α"))

    choice.observe(draw, names="value")
    draw()
    display(widgets.VBox([choice, out]))
