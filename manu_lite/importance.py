"""Streaming neuron statistics, the two published MANU scoring formulations, and exact top-alpha selection.

Statistics are *sufficient* and *streamed*: per neuron we keep the token count, Σ|a|, Σa, Σa² and
count(|a| > τ) — never the activations — so memory is O(neurons), the totals add up across batches, processes
and machines (``a + b``, :meth:`StatsTable.all_reduce_`), and every importance function below is a function of
them. Statistics come per ``(dataset, rendering)``: dataset ∈ {forget, retain}, rendering ∈ {image_text,
text_only} (``manu_lite.config.RENDERINGS``).

Two formulations (DESIGN.md §2):

``"paper"``     the equations as written. For a dataset D, contrast its two renderings ("multi" = image_text,
                "text" = text_only) per neuron: I_abs, I_freq, I_var, I_rms (:func:`paper_components`),
                I(D, n) = Σ w_k I_k, and the score S_n = I(D_f, n) / (I(D_r, n) + ε) (:func:`paper_score`).
``"reference"`` as the authors' released code behaves: per rendering, plain magnitudes (mean|a|, freq(|a| > τ),
                std, rms) and Σ_k w_k (F_k / (R_k + ε) − 1) (:func:`reference_score`); vision neurons scored on
                image_text, language neurons on text_only.

Two selections (``ManuConfig.selection``):

``"combined"``  one score per neuron (paper: S_n, which mixes both renderings through its contrast; reference:
                its native per-tower rendering) and the top alpha % (:func:`select_neurons`).
``"union"``     the modality-aware selection: one score per rendering (:func:`score_per_rendering`), the two
                rankings interleaved until alpha % distinct neurons are chosen (:func:`select_union`). When the
                two top sets do not overlap this is exactly the union of the per-rendering top alpha/2 %.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .artifacts import atomic_path
from .config import RENDERINGS, SCOPES, TOWERS, ManuConfig
from .hooks import (NeuronSite, execution_device, find_sites, record_neurons, site_layer, site_tower,
                    token_mask_from_batch)

STATISTICS = ("abs", "freq", "var", "rms")
DATASETS = ("forget", "retain")
_FIELDS = ("sum_abs", "sum", "sum_sq", "count_above")


# ---------------------------------------------------------------------------------------------------------------
# Sufficient statistics
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class NeuronStats:
    """Per-neuron sufficient statistics of one site over a set of tokens, in float64.

    count:       scalar, number of tokens seen.
    sum_abs:     ``[width]`` Σ|a|.
    sum:         ``[width]`` Σa.
    sum_sq:      ``[width]`` Σa².
    count_above: ``[width]`` #{|a| > tau}.
    tau:         the frequency threshold ``count_above`` was taken at (stats with different tau do not add).

    Derived per-neuron quantities (``mean_abs``, ``freq``, ``mean``, ``mean_sq``, ``var`` — population variance —,
    ``std``, ``rms``) are 0 for a site that saw no token (e.g. vision neurons on text-only inputs).
    """

    count: Tensor
    sum_abs: Tensor
    sum: Tensor
    sum_sq: Tensor
    count_above: Tensor
    tau: float

    @classmethod
    def zeros(cls, width: int, tau: float, device: torch.device | str | None = None) -> "NeuronStats":
        def z(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=device)
        return cls(z(), z(width), z(width), z(width), z(width), float(tau))

    @classmethod
    def from_activations(cls, activations: Tensor, tau: float) -> "NeuronStats":
        """Statistics of activations ``[..., width]`` (all leading dimensions are tokens)."""
        return cls.zeros(activations.shape[-1], tau, activations.device).update_(activations)

    @property
    def width(self) -> int:
        return self.sum.shape[0]

    def update_(self, activations: Tensor) -> "NeuronStats":
        """Add the tokens of ``activations`` ``[..., width]`` in place; returns self.

        Per-call sums are taken in float32 (or the input's wider dtype) and then added to the float64 totals:
        one cheap pass per statistic, exact enough per batch, and no drift over many batches.
        """
        x = activations.detach().reshape(-1, self.width)  # detach: totals must never join an autograd graph
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        self.sum += x.sum(0)
        a = x.abs()  # a fresh buffer, reused in place below
        self.sum_abs += a.sum(0)
        self.sum_sq += (a * a).sum(0)
        # #{|a| > tau} as sum(max(sign(|a| - tau), 0)): exact (float subtraction of distinct values is never 0)
        # and ~3x faster on CPU than summing the boolean (a > tau), whose kernel is not vectorised.
        self.count_above += a.sub_(self.tau).sign_().clamp_(min=0).sum(0)
        self.count += x.shape[0]
        return self

    def _check_compatible(self, other: "NeuronStats") -> None:
        if not isinstance(other, NeuronStats):
            raise TypeError(f"cannot add NeuronStats and {type(other).__name__}")
        if other.width != self.width:
            raise ValueError(f"cannot add statistics of width {self.width} and {other.width}: different sites?")
        if other.tau != self.tau:
            raise ValueError(f"cannot add statistics taken at tau={self.tau} and tau={other.tau}; "
                             "collect both with the same tau")

    def __add__(self, other: "NeuronStats") -> "NeuronStats":
        self._check_compatible(other)
        return NeuronStats(*(getattr(self, f) + getattr(other, f).to(self.sum.device)
                             for f in ("count", *_FIELDS)), tau=self.tau)

    def __radd__(self, other):
        # Lets ``sum(list_of_stats)`` work: sum() starts from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def tensors(self) -> dict[str, Tensor]:
        return {"count": self.count, **{f: getattr(self, f) for f in _FIELDS}}

    @property
    def device(self) -> torch.device:
        return self.sum.device

    def to(self, device: torch.device | str) -> "NeuronStats":
        """These statistics on ``device`` (self when already there; values unchanged, float64 kept)."""
        if self.sum.device == torch.device(device):
            return self
        return NeuronStats(*(t.to(device) for t in self.tensors().values()), tau=self.tau)

    def all_reduce_(self, group=None) -> "NeuronStats":
        """Sum these statistics over all processes of ``group`` in place (``torch.distributed``)."""
        _all_reduce_([self], group)
        return self

    def _per_token(self, total: Tensor) -> Tensor:
        return total / self.count.clamp_min(1)

    @property
    def mean_abs(self) -> Tensor:
        return self._per_token(self.sum_abs)

    @property
    def freq(self) -> Tensor:
        return self._per_token(self.count_above)

    @property
    def mean(self) -> Tensor:
        return self._per_token(self.sum)

    @property
    def mean_sq(self) -> Tensor:
        return self._per_token(self.sum_sq)

    @property
    def var(self) -> Tensor:
        # E[a²] − E[a]²; clamped because rounding can make it a hair negative for a constant neuron.
        return (self.mean_sq - self.mean ** 2).clamp_min(0)

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()

    @property
    def rms(self) -> Tensor:
        return self.mean_sq.sqrt()

    def __repr__(self) -> str:
        return f"NeuronStats(width={self.width}, tokens={int(self.count.item())}, tau={self.tau})"


def _all_reduce_(stats: Sequence[NeuronStats], group) -> None:
    """One SUM all_reduce over every tensor of every ``stats`` (one flat buffer: one collective, not many)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised; call torch.distributed.init_process_group first")
    parts = [t.reshape(-1) for s in stats for t in s.tensors().values()]
    flat = torch.cat(parts)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for part, reduced in zip(parts, flat.split([p.numel() for p in parts])):
        part.copy_(reduced)


class StatsTable(dict):
    """Site name → :class:`NeuronStats` for one (dataset, rendering); addable, all-reducible, saveable."""

    def __add__(self, other: Mapping[str, NeuronStats]) -> "StatsTable":
        if set(self) != set(other):
            raise ValueError(f"cannot add statistics tables over different sites: only in left "
                             f"{sorted(set(self) - set(other))}, only in right {sorted(set(other) - set(self))}")
        return StatsTable({name: self[name] + other[name] for name in self})

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def to(self, device: torch.device | str) -> "StatsTable":
        """Every site's statistics on one ``device``: how statistics of a model split over devices (each site's
        totals live with its layer, see :func:`collect_stats`) are merged at the end."""
        return StatsTable({name: s.to(device) for name, s in self.items()})

    @property
    def devices(self) -> set[torch.device]:
        return {s.device for s in self.values()}

    def all_reduce_(self, group=None) -> "StatsTable":
        """Sum every site's statistics over all processes in place, in one collective (all sites must be on one
        device the backend supports: CPU for gloo, this process's GPU for NCCL; see :meth:`to`)."""
        _all_reduce_([self[name] for name in sorted(self)], group)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write to one safetensors file (atomically)."""
        from safetensors.torch import save_file

        tensors = {f"{name}/{field}": t.detach().cpu().contiguous()
                   for name, s in self.items() for field, t in s.tensors().items()}
        taus = {name: s.tau for name, s in self.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"format": "manu-lite-stats", "tau": json.dumps(taus)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StatsTable":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "manu-lite-stats":
                raise ValueError(f"{path} is not a manu-lite statistics file (written by StatsTable.save)")
            taus = json.loads(meta["tau"])
            return cls({name: NeuronStats(count=f.get_tensor(f"{name}/count"),
                                          **{fl: f.get_tensor(f"{name}/{fl}") for fl in _FIELDS}, tau=tau)
                        for name, tau in taus.items()})


# ---------------------------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------------------------
def _model_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the device of the first module with parameters (its execution device when accelerate
    offloaded them to ``meta``)."""
    return next((d for d in map(execution_device, model.modules()) if d is not None), torch.device("cpu"))


@torch.no_grad()
def collect_stats(model: torch.nn.Module, batches: Iterable[Mapping[str, Tensor]],
                  sites: Sequence[NeuronSite] | None = None, positions: str = "recall", tau: float = 0.1,
                  progress: bool = True, seed: int = 0, max_batches: int | None = None,
                  desc: str = "neuron statistics", allow_empty: bool = False) -> StatsTable:
    """One pass over ``batches``, streaming every site's :class:`NeuronStats`; nothing per token is kept.

    batches:   dicts of model inputs plus ``labels`` ``[B, T]`` (-100 outside answers); ``labels`` are not
               passed to the model. Tensors are moved to the model's (first) device.
    sites:     default ``find_sites(model)``.
    positions: language sites count the tokens of :func:`~manu_lite.hooks.token_mask_from_batch` (``"recall"``
               or ``"all"``); vision sites count every patch of every image (all leading dimensions of their
               activations, ``[n_images, patches, width]`` or ``[patches, width]``).
    tau:       threshold of ``count_above``.
    seed:      the pass runs under this torch seed (restored afterwards), for models with stochastic layers.
    allow_empty: return zero statistics instead of raising when there are no batches or no language token was
               selected (one shard of a data-parallel pass, :mod:`manu_lite.distributed`, checks after merging).

    Models split over devices (``device_map="auto"``): each site's totals are kept on the device its
    activations arrive on, so nothing crosses devices per batch; merge with :meth:`StatsTable.to`.

    Runs in eval mode under ``torch.no_grad()`` (the training mode is restored), with ``use_cache=False`` for
    transformers models. Totals are float64 on the
    activations' device. Raises ``ValueError`` on NaN/Inf activations (naming the site and batch) and when no
    language-model token was selected.
    """
    sites = list(find_sites(model) if sites is None else sites)
    if not sites:
        raise ValueError("no sites to record; pass sites=find_sites(model) or NeuronSite objects")
    device = _model_device(model)
    table = StatsTable({s.name: NeuronStats.zeros(s.width, tau, device) for s in sites})
    # Per-batch state read by the hook: flat indices of the kept language-model positions.
    current: dict[str, Tensor | int] = {}

    def record(site: NeuronSite, acts: Tensor) -> None:
        x = acts.reshape(-1, site.width)
        if site.tower == "language":
            if x.shape[0] != current["n_positions"]:
                raise ValueError(
                    f"site {site.name} saw {x.shape[0]} token positions but the batch has {current['n_positions']} "
                    f"(input_ids {current['shape']}); this model changes the sequence length inside forward, so "
                    "the token mask does not apply: expand image tokens in input_ids (transformers >= 4.47 "
                    "processors do) or use a processor that does")
            keep = current["keep"]
            if keep is not None:
                if keep.device != x.device:  # a layer on another device than the inputs: one copy per device
                    if x.device not in current:
                        current[x.device] = keep.to(x.device)
                    keep = current[x.device]
                x = x.index_select(0, keep)
        stats = table[site.name]
        if stats.sum.device != x.device:  # models split over devices: keep each site's totals with its layer
            table[site.name] = stats = stats.to(x.device)
        stats.update_(x)

    from tqdm.auto import tqdm
    from transformers import PreTrainedModel

    # A transformers model would otherwise fill a KV cache nobody reads (0.33 GB per image+text sample at 7B).
    no_cache = {"use_cache": False} if isinstance(model, PreTrainedModel) else {}
    was_training = model.training
    if was_training:  # model.train()/eval() walk every module: only toggle when needed
        model.eval()
    devices = [device.index] if device.type == "cuda" else []
    total = len(batches) if hasattr(batches, "__len__") else None
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    n_batches = 0
    try:
        with torch.random.fork_rng(devices=devices), record_neurons(model, sites, record):
            torch.manual_seed(seed)
            for i, batch in enumerate(tqdm(batches, total=total, desc=desc, disable=not progress)):
                if max_batches is not None and i >= max_batches:
                    break
                mask = token_mask_from_batch(batch, positions)
                keep = mask.reshape(-1).nonzero().squeeze(1)
                # None = keep every row: skips a copy per site when there is no padding (positions="all").
                current.clear()
                current.update(keep=None if len(keep) == mask.numel() else keep.to(device),
                               n_positions=mask.numel(), shape=tuple(mask.shape))
                model(**{**no_cache, **{k: (v.to(device) if isinstance(v, Tensor) else v)
                                        for k, v in batch.items() if k != "labels"}})
                _check_finite(table, i)
                n_batches += 1
    finally:
        if was_training:
            model.train()
    if allow_empty:
        return table
    if n_batches == 0:
        raise ValueError("collect_stats got no batches; pass a non-empty iterable of batch dicts")
    check_language_tokens(table, sites, positions)
    return table


def check_language_tokens(table: Mapping[str, NeuronStats], sites: Sequence[NeuronSite], positions: str) -> None:
    """``ValueError`` when the language sites of ``table`` saw no token (e.g. every label is -100)."""
    language = [s.name for s in sites if s.tower == "language"]
    if language and all(table[n].count.item() == 0 for n in language):
        raise ValueError(f"no language-model token was selected with positions={positions!r}"
                         + (": every label is -100, so there is no answer token to recall; check the labels or "
                            "use positions='all'" if positions == "recall" else ""))


def _check_finite(table: StatsTable, batch_index: int) -> None:
    # One reduction for all sites (one device sync), then find the culprit only on failure.
    sums = [s.sum_sq.sum() + s.sum_abs.sum() for s in table.values()]
    if torch.isfinite(torch.stack([t.to(sums[0].device) for t in sums])).all():
        return
    bad = [name for name, t in zip(table, sums) if not torch.isfinite(t)]
    raise ValueError(f"non-finite (NaN/Inf) neuron activations at site(s) {bad} in batch {batch_index}; "
                     "check the model weights and dtype (fp16 overflow?) and the inputs of that batch")


# ---------------------------------------------------------------------------------------------------------------
# Formulations
# ---------------------------------------------------------------------------------------------------------------
def _weights(weights: Mapping[str, float] | None, formulation: str) -> dict[str, float]:
    if weights is None:
        return ManuConfig(formulation=formulation).statistic_weights
    return ManuConfig(formulation=formulation, weights=dict(weights)).statistic_weights


def _weighted(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    return sum(weights[k] * components[k] for k in STATISTICS)


def magnitudes(stats: NeuronStats) -> dict[str, Tensor]:
    """Per-neuron plain magnitudes of one dataset and rendering: abs = mean|a|, freq = share of tokens with
    |a| > τ, var = std(a) (population; the released code's "I_var" is a standard deviation), rms = sqrt(mean a²)."""
    return {"abs": stats.mean_abs, "freq": stats.freq, "var": stats.std, "rms": stats.rms}


def paper_components(multi: NeuronStats, text: NeuronStats, eps: float = 1e-5,
                     reduction: str = "mean") -> dict[str, Tensor]:
    """The paper's four per-neuron modality contrasts of one dataset, each ``[width]``:

    I_abs  = |Z̄_m − Z̄_t| / (Z̄_m + Z̄_t + ε)        Z̄ = mean |a|
    I_freq = |N_m − N_t| / (N_m + N_t + ε)            N = #{|a| > τ}
    I_var  = sqrt(Var_m + Var_t)                      (not normalised, as written)
    I_rms  = sqrt(|Z²_m − Z²_t| / (Z²_m + Z²_t + ε))   Z² = Σ a²

    ``m`` = image_text ("multi"), ``t`` = text_only. ``reduction`` is the open choice of how N and Z² reduce
    over tokens: ``"mean"`` (default) divides them by the rendering's token count — the renderings have
    different numbers of tokens, and totals would measure that rather than the neuron; ``"sum"`` keeps the
    totals, the most literal reading.
    """
    if multi.width != text.width:
        raise ValueError(f"multi and text statistics have widths {multi.width} and {text.width}")
    if reduction == "mean":
        n_m, n_t, q_m, q_t = multi.freq, text.freq, multi.mean_sq, text.mean_sq
    elif reduction == "sum":
        n_m, n_t, q_m, q_t = multi.count_above, text.count_above, multi.sum_sq, text.sum_sq
    else:
        raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'sum'")
    z_m, z_t = multi.mean_abs, text.mean_abs
    return {
        "abs": (z_m - z_t).abs() / (z_m + z_t + eps),
        "freq": (n_m - n_t).abs() / (n_m + n_t + eps),
        "var": (multi.var + text.var).sqrt(),
        "rms": ((q_m - q_t).abs() / (q_m + q_t + eps)).sqrt(),
    }


def paper_importance(multi: NeuronStats, text: NeuronStats, eps: float = 1e-5,
                     weights: Mapping[str, float] | None = None, reduction: str = "mean") -> Tensor:
    """I(D, n) = Σ_k w_k I_k(D, n) over :func:`paper_components` (default weights 1, 1, 1, 1); ``[width]``."""
    return _weighted(paper_components(multi, text, eps, reduction), _weights(weights, "paper"))


def paper_score(forget_multi: NeuronStats, forget_text: NeuronStats, retain_multi: NeuronStats,
                retain_text: NeuronStats, eps: float = 1e-5, weights: Mapping[str, float] | None = None,
                reduction: str = "mean") -> Tensor:
    """S_n = I(D_f, n) / (I(D_r, n) + ε), ``[width]``: high when a neuron's modality contrast is forget-specific."""
    i_f = paper_importance(forget_multi, forget_text, eps, weights, reduction)
    return i_f / (paper_importance(retain_multi, retain_text, eps, weights, reduction) + eps)


def paper_rendering_score(forget: NeuronStats, retain: NeuronStats, weights: Mapping[str, float] | None = None,
                          eps: float = 1e-5) -> Tensor:
    """The paper formulation's score *within one rendering*, used by ``selection="union"``, ``[width]``.

    The paper's I(D, n) contrasts two renderings, so within one rendering there is nothing to contrast; we keep
    its ratio form S = I(D_f) / (I(D_r) + ε) with I the weighted sum of the magnitude-type statistics
    (:func:`magnitudes`: mean|a|, freq, std — the per-rendering counterpart of I_var = sqrt(Var_m + Var_t) —,
    rms): S^r_n = Σ w_k M_k(forget) / (Σ w_k M_k(retain) + ε).
    """
    w = _weights(weights, "paper")
    return _weighted(magnitudes(forget), w) / (_weighted(magnitudes(retain), w) + eps)


def reference_score(forget: NeuronStats, retain: NeuronStats, weights: Mapping[str, float] | None = None,
                    eps: float = 1e-5) -> Tensor:
    """The released code's score on one rendering: Σ_k w_k (F_k / (R_k + ε) − 1), ``[width]``.

    F, R = :func:`magnitudes` of forget and retain; default weights abs 2, freq 0, var 2, rms 2. (The released
    code takes an unbiased std over stored activations; ours is the population std of the streamed totals.)
    """
    w = _weights(weights, "reference")
    f, r = magnitudes(forget), magnitudes(retain)
    return sum(w[k] * (f[k] / (r[k] + eps) - 1) for k in STATISTICS)


# ---------------------------------------------------------------------------------------------------------------
# Scores from a full set of statistics
# ---------------------------------------------------------------------------------------------------------------
StatsByKey = Mapping[tuple[str, str], Mapping[str, NeuronStats]]
# The rendering each tower is scored on in the reference formulation (as the released code does).
REFERENCE_RENDERING = {"vision": "image_text", "language": "text_only"}


def _table(stats: StatsByKey, dataset: str, rendering: str) -> Mapping[str, NeuronStats]:
    try:
        return stats[(dataset, rendering)]
    except KeyError:
        raise ValueError(f"statistics for ({dataset!r}, {rendering!r}) are missing; have {sorted(stats)}. "
                         "Collect them with collect_stats on that dataset's batches in that rendering") from None


def _candidate_sites(stats: StatsByKey, towers: Sequence[str]) -> list[str]:
    names = set().union(*(table.keys() for table in stats.values())) if stats else set()
    picked = [n for n in names if site_tower(n) in towers]
    if not picked:
        raise ValueError(f"no statistics for any site of towers {tuple(towers)}; have sites {sorted(names)}")
    return _canonical(picked)


def _canonical(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (TOWERS.index(site_tower(n)), site_layer(n), n))


def _reduction(config: ManuConfig) -> str:
    return config.extra.get("reduction", "mean")


def score_neurons(stats: StatsByKey, config: ManuConfig) -> dict[str, Tensor]:
    """One score per neuron — the ``selection="combined"`` score — for every site of ``config.towers``.

    stats: ``{(dataset, rendering): {site name: NeuronStats}}`` with dataset ∈ {forget, retain} and rendering ∈
    {image_text, text_only}.
    paper:     S_n (:func:`paper_score`), contrasting the two renderings; needs all four tables.
    reference: :func:`reference_score`, vision sites on image_text, language sites on text_only.
    The paper's token reduction is ``config.extra.get("reduction", "mean")`` (see :func:`paper_components`).
    """
    w, eps = config.statistic_weights, config.epsilon
    scores = {}
    for name in _candidate_sites(stats, config.towers):
        if config.formulation == "paper":
            scores[name] = paper_score(*(_table(stats, d, r)[name] for d in DATASETS for r in RENDERINGS),
                                       eps=eps, weights=w, reduction=_reduction(config))
        else:
            rendering = REFERENCE_RENDERING[site_tower(name)]
            scores[name] = reference_score(_table(stats, "forget", rendering)[name],
                                           _table(stats, "retain", rendering)[name], weights=w, eps=eps)
    return scores


def score_per_rendering(stats: StatsByKey, config: ManuConfig) -> dict[str, dict[str, Tensor]]:
    """``{rendering: {site: score}}`` — the ``selection="union"`` scores, one ranking per rendering.

    paper: :func:`paper_rendering_score`; reference: :func:`reference_score` on that rendering. A site enters a
    rendering's ranking only when both forget and retain saw tokens of it there (vision sites never run on
    text-only inputs, so they are ranked on image_text alone).
    """
    w, eps = config.statistic_weights, config.epsilon
    score = paper_rendering_score if config.formulation == "paper" else reference_score
    rankings: dict[str, dict[str, Tensor]] = {}
    for rendering in RENDERINGS:
        if ("forget", rendering) not in stats or ("retain", rendering) not in stats:
            continue
        forget, retain = stats[("forget", rendering)], stats[("retain", rendering)]
        ranking = {}
        for name in _candidate_sites(stats, config.towers):
            if name in forget and name in retain and forget[name].count > 0 and retain[name].count > 0:
                ranking[name] = score(forget[name], retain[name], weights=w, eps=eps)
        if ranking:
            rankings[rendering] = ranking
    if not rankings:
        raise ValueError(f"no rendering has both forget and retain statistics with tokens; have {sorted(stats)}")
    return rankings


def select(stats: StatsByKey, config: ManuConfig) -> dict[str, Tensor]:
    """The neurons MANU prunes under ``config``: site → sorted ``LongTensor`` of neuron indices."""
    if config.selection == "union":
        return select_union(list(score_per_rendering(stats, config).values()), config.alpha, config.scope)
    return select_neurons(score_neurons(stats, config), config.alpha, config.scope)


# ---------------------------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------------------------
def n_selected(alpha: float, n: int) -> int:
    """How many of ``n`` neurons alpha % is: round half up of alpha·n/100, on alpha's decimal value (so that
    float noise never flips a .5 case)."""
    if not (0 < alpha <= 100):
        raise ValueError(f"alpha={alpha!r} must be a percentage in (0, 100]")
    return math.floor(Fraction(str(alpha)) * n / 100 + Fraction(1, 2))


def _units(names: Sequence[str], scope: str) -> list[list[str]]:
    if scope == "global":
        return [list(names)]
    if scope == "tower":
        return [[n for n in names if site_tower(n) == t] for t in TOWERS if any(site_tower(n) == t for n in names)]
    if scope == "layer":
        return [[n] for n in names]
    raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")


def select_union(rankings: Sequence[Mapping[str, Tensor]], alpha: float, scope: str = "global") -> dict[str, Tensor]:
    """Exactly :func:`n_selected` (alpha, N) neurons per scope unit from several rankings, site → sorted indices.

    rankings: score dicts ``{site: [width]}`` (higher = prune first); a site may be missing from some.
    scope:    ``"global"`` (one unit), ``"tower"`` or ``"layer"`` (each site); N = neurons in the unit.

    Each ranking orders the unit's neurons it scores by descending score, ties by ascending position (sites in
    (tower, layer) order, then neuron index). The rankings are interleaved — first of each, second of each, … —
    and the first k distinct neurons are taken. With one ranking that is its top k; with two that do not
    overlap it is the union of their top k/2.
    """
    if not rankings:
        raise ValueError("no rankings to select from")
    names = _canonical(set().union(*(r.keys() for r in rankings)))
    widths: dict[str, int] = {}
    for ranking in rankings:
        for name, s in ranking.items():
            if s.dim() != 1:
                raise ValueError(f"scores of {name} must be 1-D [width], got shape {tuple(s.shape)}")
            if widths.setdefault(name, s.numel()) != s.numel():
                raise ValueError(f"rankings disagree on the width of {name}: {widths[name]} vs {s.numel()}")
            if not torch.isfinite(s).all():
                raise ValueError(f"scores of {name} contain NaN/Inf; check its statistics (empty site?)")
    selected: dict[str, Tensor] = {}
    for unit in _units(names, scope):
        offsets = dict(zip(unit, [0, *torch.tensor([widths[n] for n in unit]).cumsum(0).tolist()]))
        n_unit = sum(widths[n] for n in unit)
        orders = []
        for ranking in rankings:
            present = [n for n in unit if n in ranking]
            if not present:
                continue
            flat = torch.cat([ranking[n].detach().double().cpu() for n in present])
            ids = torch.cat([offsets[n] + torch.arange(widths[n]) for n in present])
            orders.append(ids[torch.sort(flat, descending=True, stable=True).indices])
        chosen = _first_distinct(orders, n_selected(alpha, n_unit), n_unit)
        for name in unit:
            local = chosen[(chosen >= offsets[name]) & (chosen < offsets[name] + widths[name])] - offsets[name]
            selected[name] = local.sort().values
    return selected


def _first_distinct(orders: Sequence[Tensor], k: int, n: int) -> Tensor:
    """The first ``k`` distinct ids of the orders interleaved round-robin (ids in ``[0, n)``)."""
    longest = max(len(o) for o in orders)
    grid = torch.full((len(orders), longest), -1, dtype=torch.long)
    for row, order in zip(grid, orders):
        row[:len(order)] = order
    seq = grid.T.reshape(-1)
    seq = seq[seq >= 0]
    position = torch.arange(len(seq))
    first = torch.full((n,), len(seq), dtype=torch.long).scatter_reduce(0, seq, position, "amin")
    return seq[first[seq] == position][:k]


def select_neurons(scores: Mapping[str, Tensor], alpha: float, scope: str = "global") -> dict[str, Tensor]:
    """The top alpha % neurons by score, exactly :func:`n_selected` (alpha, N) per scope unit; site → sorted
    ``LongTensor``. Ties go to the lower position (sites in (tower, layer) order, then neuron index)."""
    return select_union([scores], alpha, scope)


def selection_summary(indices: Mapping[str, Tensor], widths: Mapping[str, int]) -> dict:
    """Counts of selected neurons: total, per tower and per site, each with the number of candidates."""
    per_site = {n: {"selected": int(len(indices.get(n, ()))), "of": int(widths[n])} for n in _canonical(widths)}
    per_tower = {}
    for name, row in per_site.items():
        tower = per_tower.setdefault(site_tower(name), {"selected": 0, "of": 0})
        tower["selected"] += row["selected"]
        tower["of"] += row["of"]
    total = sum(r["selected"] for r in per_site.values())
    of = sum(r["of"] for r in per_site.values())
    return {"selected": total, "of": of, "fraction": total / of if of else 0.0, "per_tower": per_tower,
            "per_site": per_site}
