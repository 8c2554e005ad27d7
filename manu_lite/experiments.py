"""The chapters' experiments: verifying a mask, the alpha sweep, selections compared, the renderings' overlap,
and explorers that always show a static figure and add a widget only in a live session
(:func:`manu_lite.profiles.interactive`): the executed book is read without a kernel, where a widget is dead.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch

from .bench import World
from .config import RENDERINGS, ManuConfig
from .evaluate import evaluate
from .hooks import find_sites, record_neurons, site_tower
from .importance import select, select_neurons, select_union
from .models import model_inputs
from .profiles import interactive
from .prune import NeuronMask
from .viz import (PAGE_WIDTH, figure, glue_figure, layer_heatmap, overlap_figure, point_figure, show, sweep_figure,
                  tower_split_note)


# --------------------------------------------------------------------------------- 03: the renderings' overlap
def overlap_curve(per_rendering: Mapping[str, Mapping[str, torch.Tensor]], alphas: Sequence[float]):
    """Overlap of the per-rendering top-alpha sets (language neurons) against the overlap expected by chance.

    Returns ``(fig, rows)``: rows are dicts ``alpha, k, shared, overlap, chance``; overlap = shared / k."""
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
    return overlap_figure(rows), rows


# --------------------------------------------------------------------------------- 04: pruning and the sweep
def live_tensors(model) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer of ``model`` as it holds them, and each 4-bit weight's quantization
    scales (``quant_state.absmax``, bitsandbytes), by name: what a forward pass computes with."""
    tensors = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        tensors[name] = tensor.detach().clone()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            tensors[f"{name}.absmax"] = state.absmax.detach().clone()
    return tensors


@torch.no_grad()
def verify_mask(model, mask, batch) -> "object":
    """Check, on one batch, every claim a mask makes; returns a ``pandas.Series`` claim → bool.

    Inside ``mask.applied(model)``: the pruned neurons' activations are exactly 0; for a neuron-removal mask their
    ``down_proj``/``fc2`` columns and ``gate/up_proj``/``fc1`` rows are zero and nothing but those rows and columns
    changed, for an activation mask (4-bit weights) no weight changed. After the block: every parameter is
    bit-identical to before.

    Weights are compared as the model holds them (:func:`live_tensors`), after one unmasked forward pass:
    bitsandbytes' CPU path repacks 4-bit weights on the first forward, and its ``state_dict`` export of a repacked
    weight differs from call to call (checked on bitsandbytes 0.50) although parameters and outputs do not.
    """
    import pandas as pd

    sites = {s.name: s for s in find_sites(model)}
    model(**model_inputs(batch))
    before = live_tensors(model)
    pruned = {n: i for n, i in mask.indices.items() if len(i)}
    claims = {}
    with mask.applied(model):
        acts = {}
        with record_neurons(model, [sites[n] for n in pruned], lambda s, a: acts.setdefault(s.name, a)):
            model(**model_inputs(batch))
        claims["pruned neurons' activations are exactly 0"] = all(
            float(acts[n][..., i].abs().max()) == 0 for n, i in pruned.items() if n in acts)
        if mask.mode == "activation":  # a hook zeroes activations; the (e.g. 4-bit, packed) weights stay as they are
            claims["weights untouched (activation mask)"] = all(
                torch.equal(v, before[k]) for k, v in live_tensors(model).items())
        else:
            claims["their down_proj / fc2 columns are zero"] = all(
                bool((sites[n].out_module.weight[:, i] == 0).all()) for n, i in pruned.items())
            claims["their gate_proj, up_proj / fc1 rows (and biases) are zero"] = all(
                bool((m.weight[rows] == 0).all()) and (m.bias is None or bool((m.bias[rows] == 0).all()))
                for n, i in pruned.items() for rows in [sites[n].in_rows(i)] for m in sites[n].in_modules)
            allowed = 0
            for n, i in pruned.items():
                out, ins = sites[n].out_module, sites[n].in_modules
                # A fused gate_up_proj feeds each neuron from two rows (site.in_rows).
                rows = len(sites[n].in_rows(i))
                allowed += len(i) * out.weight.shape[0] + rows * sum(m.weight.shape[1] + (m.bias is not None)
                                                                     for m in ins)
            changed = sum(int((v != before[k]).sum()) for k, v in live_tensors(model).items())
            claims["nothing else changed (changed entries ≤ those rows and columns)"] = 0 < changed <= allowed
    claims["after restore: every parameter bit-identical"] = all(
        torch.equal(v, before[k]) for k, v in live_tensors(model).items())
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
        return (mean.loc[0] - mean).drop(index=0)


def alpha_sweep(model, processor, adapter, world: World, stats, alphas: Sequence[float], config: ManuConfig,
                evaluation, retain_people: int | None = 10, progress: bool = False) -> Sweep:
    """Prune the top alpha % for each alpha (one statistics pass, reused), evaluate forget and a retain subsample.

    stats: ``report.stats`` of :func:`~manu_lite.manu.manu_unlearn` (or ``{(dataset, rendering): StatsTable}``).
    evaluation: an :class:`~manu_lite.evaluate.EvalConfig`; only its forget and retain sets are evaluated.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .manu import choose_prune_mode

    sub = world.with_retain_sample(retain_people)
    evaluation = dataclasses.replace(evaluation, sets=("forget", "retain"))
    sites = find_sites(model, config.towers)
    rows = [dict(r, alpha=0.0) for r in evaluate(model, processor, adapter, sub, evaluation, progress=False)]
    masks = {}
    for alpha in tqdm(list(alphas), desc="alpha sweep", disable=not progress):
        point = dataclasses.replace(config, alpha=alpha)
        mode = choose_prune_mode(model, point.prune_mode)
        mask = NeuronMask.from_sites(select(stats, point), sites, mode=mode)
        with mask.applied(model):
            rows += [dict(r, alpha=float(alpha)) for r in evaluate(model, processor, adapter, sub, evaluation,
                                                                   progress=False)]
        masks[float(alpha)] = mask.summary()
    frame = pd.DataFrame(rows)[["alpha", "set", "rendering", "task", "value", "n"]]
    return Sweep(frame, masks, config.to_dict())


@dataclasses.dataclass
class SplitRuns:
    """MANU on several forget splits with one vanilla model: per split its world, mask and report, and the drops
    from vanilla (``split, set, rendering, drop`` in points, mean over tasks; empty without an evaluation)."""

    runs: dict
    drops: object

    def spread(self):
        """Mean, std (over splits, ddof 1), min and max of the drops: rows ``(set, rendering)``."""
        return self.drops.groupby(["set", "rendering"])["drop"].agg(["mean", "std", "min", "max"])


def across_splits(model, processor, adapter, profile, config: ManuConfig, evaluation=None,
                  splits: Sequence[str] = ("forget_5", "forget_10", "forget_15"), retain_people: int | None = 10,
                  seed: int = 0, progress: bool = False) -> SplitRuns:
    """Run ``config`` on each forget split of ``profile``'s bench against the same ``model`` (the vanilla model's
    cache key does not depend on the split, so one vanilla serves all of them) and, with ``evaluation``, measure
    the drops on forget and on a seeded sample of ``retain_people`` retain people (all of them with ``None``).

    The benchmark's splits are nested (forget_5 ⊂ forget_10 ⊂ forget_15): their spread is a lower bound on the
    spread of independent draws of people, not a confidence interval.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .manu import manu_unlearn
    from .profiles import profile_world

    runs, rows = {}, []
    for split in tqdm(list(splits), desc="forget splits", disable=not progress):
        world = profile_world(profile, split).with_retain_sample(retain_people, seed)
        mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, config, progress=False)
        runs[split] = {"world": world, "mask": mask, "report": report}
        if evaluation is None:
            continue
        scoped = dataclasses.replace(evaluation, sets=("forget", "retain"))
        before = evaluate(model, processor, adapter, world, scoped, progress=False).frame()
        with mask.applied(model):
            after = evaluate(model, processor, adapter, world, scoped, progress=False).frame()
        mean = [f.groupby(["set", "rendering"])["value"].mean() * 100 for f in (before, after)]
        rows += [{"split": split, "set": k[0], "rendering": k[1], "drop": float(v)}
                 for k, v in (mean[0] - mean[1]).items()]
    return SplitRuns(runs, pd.DataFrame(rows, columns=["split", "set", "rendering", "drop"]))


def custom_selection(stats, score_fn, alpha: float, towers: Sequence[str] = ("language", "vision"),
                     scope: str = "global") -> dict[str, torch.Tensor]:
    """Select with your own per-rendering score ``score_fn(forget: NeuronStats, retain: NeuronStats) -> [width]``:
    one ranking per rendering (sites that saw tokens in both datasets), interleaved as the ``"balanced"`` method does."""
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

    sub = world.with_retain_sample(retain_people)
    evaluation = dataclasses.replace(evaluation, sets=("forget", "retain"))
    rows = list(evaluate(model, processor, adapter, sub, evaluation, method="vanilla", progress=False))
    for label, indices in selections.items():
        with NeuronMask(indices).applied(model):
            rows += evaluate(model, processor, adapter, sub, evaluation, method=label, progress=False)
    frame = pd.DataFrame(rows)
    mean = frame.groupby(["method", "set", "rendering"])["value"].mean().unstack(["set", "rendering"]) * 100
    return (mean.loc["vanilla"] - mean).drop(index="vanilla").loc[list(selections)]


# ------------------------------------------------------------------------------------------- explorers
def alpha_explorer(sweep: Sweep, glue_as: str | None = None) -> None:
    """Show the sweep: always the static figure (bound to ``glue_as`` for a numbered ``{glue:figure}`` when given,
    see :func:`manu_lite.viz.glue_figure`); in a live kernel also an alpha slider that redraws the scores of the
    forget and retain sets per rendering and the share of each layer pruned at that alpha."""
    glue_figure(glue_as, sweep_figure(sweep)) if glue_as else show(sweep_figure(sweep))
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
            show(point_figure(sweep, slider.value))

    slider.observe(draw, names="value")
    draw()
    display(widgets.VBox([slider, out]))


def heatmap_explorer(selections: Mapping[str, Mapping[str, Mapping]]) -> None:
    """Layer heatmaps of several selections (e.g. formulation → {alpha: summary}); static figure of all of them,
    and in a live kernel a dropdown to look at one at a time."""
    fig = figure(PAGE_WIDTH, 1.3 + 0.42 * max(len(next(iter(s.values()))["per_site"]) for s in selections.values()))
    axes = fig.subplots(1, len(selections), squeeze=False, sharey=True)[0]
    for ax, (name, summaries) in zip(axes, selections.items()):
        layer_heatmap({f"{a:g}" if isinstance(a, float) else str(a): m for a, m in summaries.items()},
                      title=name, ax=ax, colorbar=False)  # every cell is labelled with its percentage
        ax.set_xlabel("α (%)")
    rows = sorted({n for summaries in selections.values() for m in summaries.values() for n in m["per_site"]})
    fig.suptitle(f"% of each layer's neurons selected, per α ({tower_split_note(rows)})", fontsize=9)
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
