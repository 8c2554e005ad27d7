"""The three named MANU methods, scores per neuron, and their selections (DESIGN.md §2).

The statistics they read are streamed by :mod:`manu_lite.stats`. Each name means exactly one computation:

``"paper"``     the paper's equations as written. For a dataset D, contrast its two renderings ("multi" =
                image_text, "text" = text_only) per neuron: I_abs, I_freq, I_var, I_rms (:func:`paper_components`;
                N a count and Z² a sum unless ``ManuConfig.paper_reduction="mean"``), I(D, n) = Σ w_k I_k with
                w = 1, 1, 1, 1, the score S_n = I(D_f, n) / (I(D_r, n) + ε) (:func:`paper_score`), and the top
                alpha % of S_n (exactly round-half-up(alpha·N/100), ties to the lower position) over ``scope``
                (default global). On vision neurons the text-only statistics are empty (text never reaches the
                vision tower) and S_n = (3 + σ_f)/(3 + σ_r + ε): see ``ManuConfig.paper_vision``.
``"reference"`` the authors' released code's selection: per dataset and rendering, plain magnitudes mean|a|,
                freq(|a| > τ), unbiased std, rms; Σ_k w_k (F_k / (R_k + ε) − 1) with w = 2, 0, 2, 2
                (:func:`reference_score`); vision neurons scored on image_text, language neurons on text_only; one
                threshold per tower: k = int(alpha/100 · n), mask = score >= k-th largest (ties all kept, so a
                tie can select more than k) (:func:`select_threshold`). Per-layer sites, no padding, true neurons.
                ``emulate_released_defects=True`` adds the code's defects (:mod:`manu_lite.released`).
``"balanced"``  this book's modality-balanced variant, neither of the above: per rendering the ratio of plain
                magnitudes Σ w_k M_k(forget) / (Σ w_k M_k(retain) + ε) (:func:`balanced_rendering_score`), the two
                rankings interleaved until alpha % distinct neurons are chosen (:func:`select_union`); when the two
                top sets do not overlap this is the union of the per-rendering top alpha/2 %.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .config import RENDERINGS, SCOPES, TOWERS, ManuConfig
from .hooks import site_layer, site_tower
from .stats import NeuronStats

STATISTICS = ("abs", "freq", "var", "rms")
DATASETS = ("forget", "retain")


# ---------------------------------------------------------------------------------------------------------------
# Formulations
# ---------------------------------------------------------------------------------------------------------------
def _weights(weights: Mapping[str, float] | None, formulation: str) -> dict[str, float]:
    if weights is None:
        return ManuConfig(formulation=formulation).statistic_weights
    return ManuConfig(formulation=formulation, weights=dict(weights)).statistic_weights


def _weighted(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    return sum(weights[k] * components[k] for k in STATISTICS)


def magnitudes(stats: NeuronStats, unbiased: bool = False) -> dict[str, Tensor]:
    """Per-neuron plain magnitudes of one dataset and rendering: abs = mean|a|, freq = share of tokens with
    |a| > τ, var = std(a) (the released code's "I_var" is a standard deviation; ``unbiased=True`` takes it with
    Bessel's correction, as ``torch.std`` in the code does), rms = sqrt(mean a²)."""
    return {"abs": stats.mean_abs, "freq": stats.freq, "var": stats.std_unbiased if unbiased else stats.std,
            "rms": stats.rms}


def paper_components(multi: NeuronStats, text: NeuronStats, eps: float = 1e-5,
                     reduction: str = "sum") -> dict[str, Tensor]:
    """The paper's four per-neuron modality contrasts of one dataset, each ``[width]``:

    I_abs  = |Z̄_m − Z̄_t| / (Z̄_m + Z̄_t + ε)        Z̄ = mean |a|
    I_freq = |N_m − N_t| / (N_m + N_t + ε)            N = #{|a| > τ}
    I_var  = sqrt(Var_m + Var_t)                      (population variance; not normalised, as written)
    I_rms  = sqrt(|Z²_m − Z²_t| / (Z²_m + Z²_t + ε))   Z² = Σ a²

    ``m`` = image_text ("multi"), ``t`` = text_only. ``reduction="sum"`` (default) is the equations as written:
    N a count, Z² a sum over the rendering's tokens. ``"mean"`` divides both by the rendering's token count (the
    renderings have different numbers of tokens, and totals partly measure that).
    A rendering that saw no token (vision neurons on text_only) has Z̄ = N = Z² = Var = 0, so I_abs, I_freq and
    I_rms are ≈ 1 (0 where the other rendering is 0 too) and I_var = σ_m.
    """
    if multi.width != text.width:
        raise ValueError(f"multi and text statistics have widths {multi.width} and {text.width}")
    if reduction == "mean":
        n_m, n_t, q_m, q_t = multi.freq, text.freq, multi.mean_sq, text.mean_sq
    elif reduction == "sum":
        n_m, n_t, q_m, q_t = multi.count_above, text.count_above, multi.sum_sq, text.sum_sq
    else:
        raise ValueError(f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")
    z_m, z_t = multi.mean_abs, text.mean_abs
    return {
        "abs": (z_m - z_t).abs() / (z_m + z_t + eps),
        "freq": (n_m - n_t).abs() / (n_m + n_t + eps),
        "var": (multi.var + text.var).sqrt(),
        "rms": ((q_m - q_t).abs() / (q_m + q_t + eps)).sqrt(),
    }


def paper_importance(multi: NeuronStats, text: NeuronStats, eps: float = 1e-5,
                     weights: Mapping[str, float] | None = None, reduction: str = "sum") -> Tensor:
    """I(D, n) = Σ_k w_k I_k(D, n) over :func:`paper_components` (default weights 1, 1, 1, 1); ``[width]``."""
    return _weighted(paper_components(multi, text, eps, reduction), _weights(weights, "paper"))


def paper_score(forget_multi: NeuronStats, forget_text: NeuronStats, retain_multi: NeuronStats,
                retain_text: NeuronStats, eps: float = 1e-5, weights: Mapping[str, float] | None = None,
                reduction: str = "sum") -> Tensor:
    """S_n = I(D_f, n) / (I(D_r, n) + ε), ``[width]``: high when a neuron's modality contrast is forget-specific."""
    i_f = paper_importance(forget_multi, forget_text, eps, weights, reduction)
    return i_f / (paper_importance(retain_multi, retain_text, eps, weights, reduction) + eps)


def balanced_rendering_score(forget: NeuronStats, retain: NeuronStats, weights: Mapping[str, float] | None = None,
                             eps: float = 1e-5) -> Tensor:
    """The ``"balanced"`` method's score *within one rendering* (this book's variant, not the paper's S_n),
    ``[width]``: S^r_n = Σ w_k M_k(forget) / (Σ w_k M_k(retain) + ε) over the plain :func:`magnitudes` (mean|a|,
    freq, population std, rms), default weights 1, 1, 1, 1."""
    w = _weights(weights, "balanced")
    return _weighted(magnitudes(forget), w) / (_weighted(magnitudes(retain), w) + eps)


def reference_score(forget: NeuronStats, retain: NeuronStats, weights: Mapping[str, float] | None = None,
                    eps: float = 1e-5, unbiased: bool = True) -> Tensor:
    """The released code's score on one rendering: Σ_k w_k (F_k / (R_k + ε) − 1), ``[width]``.

    F, R = :func:`magnitudes` of forget and retain (std unbiased, as the code's ``torch.std``); default weights
    abs 2, freq 0, var 2, rms 2.
    """
    w = _weights(weights, "reference")
    f, r = magnitudes(forget, unbiased), magnitudes(retain, unbiased)
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


def _paper_candidates(stats: StatsByKey, config: ManuConfig) -> list[str]:
    names = _candidate_sites(stats, config.towers)
    if config.paper_vision == "exclude":
        names = [n for n in names if site_tower(n) != "vision"]
        if not names:
            raise ValueError("paper_vision='exclude' leaves no candidate: towers are only vision; score the language "
                             "tower or use paper_vision='as_written'")
    return names


def score_neurons(stats: StatsByKey, config: ManuConfig) -> dict[str, Tensor]:
    """One score per neuron of every candidate site of ``config.towers``, for ``"paper"`` or ``"reference"``.

    stats: ``{(dataset, rendering): {site name: NeuronStats}}`` with dataset ∈ {forget, retain} and rendering ∈
    {image_text, text_only}.
    paper:     S_n (:func:`paper_score`) with ``config.paper_reduction``, contrasting the two renderings; needs all
               four tables; vision sites dropped when ``config.paper_vision == "exclude"``.
    reference: :func:`reference_score`, vision sites on image_text, language sites on text_only.
    ``"balanced"`` has one score per rendering instead: :func:`score_per_rendering`.
    """
    w, eps = config.statistic_weights, config.epsilon
    if config.formulation == "paper":
        return {name: paper_score(*(_table(stats, d, r)[name] for d in DATASETS for r in RENDERINGS),
                                  eps=eps, weights=w, reduction=config.paper_reduction)
                for name in _paper_candidates(stats, config)}
    if config.formulation == "reference":
        scores = {}
        for name in _candidate_sites(stats, config.towers):
            rendering = REFERENCE_RENDERING[site_tower(name)]
            scores[name] = reference_score(_table(stats, "forget", rendering)[name],
                                           _table(stats, "retain", rendering)[name], weights=w, eps=eps)
        return scores
    raise ValueError(f"formulation {config.formulation!r} has one score per rendering: use score_per_rendering")


def score_per_rendering(stats: StatsByKey, config: ManuConfig) -> dict[str, dict[str, Tensor]]:
    """``{rendering: {site: score}}`` — the ``"balanced"`` method's rankings, one per rendering, each
    :func:`balanced_rendering_score`. A site enters a rendering's ranking only when both forget and retain saw
    tokens of it there (vision sites never run on text-only inputs, so they are ranked on image_text alone)."""
    w, eps = ManuConfig(formulation="balanced", weights=config.weights).statistic_weights, config.epsilon
    rankings: dict[str, dict[str, Tensor]] = {}
    for rendering in RENDERINGS:
        if ("forget", rendering) not in stats or ("retain", rendering) not in stats:
            continue
        forget, retain = stats[("forget", rendering)], stats[("retain", rendering)]
        ranking = {}
        for name in _candidate_sites(stats, config.towers):
            if name in forget and name in retain and forget[name].count > 0 and retain[name].count > 0:
                ranking[name] = balanced_rendering_score(forget[name], retain[name], weights=w, eps=eps)
        if ranking:
            rankings[rendering] = ranking
    if not rankings:
        raise ValueError(f"no rendering has both forget and retain statistics with tokens; have {sorted(stats)}")
    return rankings


def select(stats: StatsByKey, config: ManuConfig) -> dict[str, Tensor]:
    """The neurons the method ``config.formulation`` prunes: site → sorted ``LongTensor`` of neuron indices."""
    if config.formulation == "balanced":
        return select_union(list(score_per_rendering(stats, config).values()), config.alpha,
                            config.selection_scope)
    if config.formulation == "reference":
        return select_reference(stats, config)
    return select_neurons(score_neurons(stats, config), config.alpha, config.selection_scope)


def select_reference(stats: StatsByKey, config: ManuConfig) -> dict[str, Tensor]:
    """The released code's selection rule (``formulation="reference"``) with this book's fixes:
    :func:`reference_score` per site and :func:`select_threshold` per ``config.selection_scope`` unit (default one
    per tower, as the code's two score dicts).

    ``emulate_released_defects=True`` needs projection-output statistics, not neuron statistics:
    :func:`manu_lite.manu.manu_unlearn` collects them and selects with :func:`manu_lite.released.select_released`.
    """
    if config.emulate_released_defects:
        raise ValueError("emulate_released_defects=True scores projection outputs (manu_lite.released), not these "
                         "neuron statistics; run manu_unlearn(model, processor, forget, retain, config), which "
                         "collects them")
    return select_threshold(score_neurons(stats, config), config.alpha, config.selection_scope)


def select_threshold(scores: Mapping[str, Tensor], alpha: float, scope: str = "tower") -> dict[str, Tensor]:
    """The released code's top-k rule per scope unit: k = int(alpha/100 · N) in float arithmetic (floor), the
    threshold is the k-th largest score of the unit, and every neuron with score >= threshold is selected — so
    ties at the threshold are all kept and the count can exceed k; k = 0 selects nothing. Site → sorted indices."""
    if not (0 < alpha <= 100):
        raise ValueError(f"alpha={alpha!r} must be a percentage in (0, 100]")
    names = _canonical(scores)
    selected: dict[str, Tensor] = {}
    for unit in _units(names, scope):
        flat = torch.cat([scores[n].detach().double().cpu() for n in unit])
        if not torch.isfinite(flat).all():
            raise ValueError(f"scores of {unit} contain NaN/Inf; check their statistics (empty site?)")
        k = int(alpha / 100 * flat.numel())
        threshold = torch.topk(flat, k).values[-1] if k > 0 else math.inf
        for n in unit:
            selected[n] = (scores[n].detach().double().cpu() >= threshold).nonzero().squeeze(1)
    return selected


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
