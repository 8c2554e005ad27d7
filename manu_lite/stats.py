"""Streaming, mergeable neuron statistics and the one pass that collects them.

Statistics are *sufficient* and *streamed*: per neuron we keep the token count, Σ|a|, Σa, Σa², the sum of
squared deviations M2 = Σ(a − ā)² and count(|a| > τ) — never the activations — so memory is O(neurons), the totals add up across batches, processes
and machines (``a + b``, :meth:`StatsTable.all_reduce_`), and every importance function of
:mod:`manu_lite.importance` is a function of them. Statistics come per ``(dataset, rendering)``: dataset ∈
{forget, retain}, rendering ∈ {image_text, text_only} (``manu_lite.config.RENDERINGS``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .artifacts import atomic_path
from .hooks import NeuronSite, find_sites, record_neurons, token_mask_from_batch
from .models import model_device

_FIELDS = ("sum_abs", "sum", "sum_sq", "m2", "count_above")


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
    m2:          ``[width]`` Σ(a − mean)², merged across batches with Chan et al.'s pairwise update, so the
                 variance never comes from the cancellation-prone E[a²] − E[a]² (a neuron whose mean is 1000× its
                 spread keeps its std to < 1e-6 relative error on float32 input; a constant neuron has std 0).
    count_above: ``[width]`` #{|a| > tau}.
    tau:         the frequency threshold ``count_above`` was taken at (stats with different tau do not add).

    Derived per-neuron quantities (``mean_abs``, ``freq``, ``mean``, ``mean_sq``, ``var`` — population variance —,
    ``var_unbiased``, ``std``, ``std_unbiased``, ``rms``) are 0 for a site that saw no token (e.g. vision neurons on text-only inputs).
    """

    count: Tensor
    sum_abs: Tensor
    sum: Tensor
    sum_sq: Tensor
    m2: Tensor
    count_above: Tensor
    tau: float

    @classmethod
    def zeros(cls, width: int, tau: float, device: torch.device | str | None = None) -> "NeuronStats":
        def z(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=device)
        return cls(z(), z(width), z(width), z(width), z(width), z(width), float(tau))

    @classmethod
    def from_activations(cls, activations: Tensor, tau: float) -> "NeuronStats":
        """Statistics of activations ``[..., width]`` (all leading dimensions are tokens)."""
        return cls.zeros(activations.shape[-1], tau, activations.device).update_(activations)

    @property
    def width(self) -> int:
        return self.sum.shape[0]

    def update_(self, activations: Tensor) -> "NeuronStats":
        """Add the tokens of ``activations`` ``[..., width]`` in place; returns self.

        Sums are accumulated in float64 (``sum(dtype=float64)``, no float32 partial totals). The batch's squared
        deviations are taken about its own float64 mean rounded to the input dtype (``c``; exact subtraction for
        values near it), corrected by n·(mean − c)² and merged into ``m2`` with Chan's pairwise update.
        """
        x = activations.detach().reshape(-1, self.width)  # detach: totals must never join an autograd graph
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        n_b = x.shape[0]
        if n_b == 0:
            return self
        f64 = torch.float64
        sum_b = x.sum(0, dtype=f64)
        mean_b = sum_b / n_b
        centre = mean_b.to(x.dtype)
        d = x - centre
        shift = mean_b - centre.to(f64)
        m2_b = (d * d).sum(0, dtype=f64) - n_b * shift * shift
        m2_b.clamp_(min=0)
        n_a = self.count  # a tensor: no device sync per batch; the merge term is 0 while n_a = 0
        delta = mean_b - self.sum / n_a.clamp_min(1)
        self.m2 += m2_b + delta * delta * (n_a * n_b / (n_a + n_b))
        self.sum += sum_b
        a = x.abs()  # a fresh buffer, reused in place below
        self.sum_abs += a.sum(0, dtype=f64)
        self.sum_sq += (a * a).sum(0, dtype=f64)
        # #{|a| > tau} as sum(max(sign(|a| - tau), 0)): exact (float subtraction of distinct values is never 0)
        # and ~3x faster on CPU than summing the boolean (a > tau), whose kernel is not vectorised.
        self.count_above += a.sub_(self.tau).sign_().clamp_(min=0).sum(0, dtype=f64)
        self.count += n_b
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
        o = other.to(self.sum.device)
        totals = {f: getattr(self, f) + getattr(o, f) for f in ("count", *_FIELDS)}
        n_a, n_b = self.count, o.count
        if n_a > 0 and n_b > 0:  # Chan et al.: M2 = M2_a + M2_b + δ² n_a n_b / n
            delta = o.sum / n_b - self.sum / n_a
            totals["m2"] = self.m2 + o.m2 + delta * delta * (n_a * n_b / (n_a + n_b))
        return NeuronStats(**totals, tau=self.tau)

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
        """Population variance M2 / n."""
        return self._per_token(self.m2)

    @property
    def var_unbiased(self) -> Tensor:
        """Unbiased (Bessel) variance M2 / (n − 1), as ``torch.std`` (the released code) takes it; 0 for n < 2."""
        return self.m2 / (self.count - 1).clamp_min(1)

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()

    @property
    def std_unbiased(self) -> Tensor:
        return self.var_unbiased.sqrt()

    @property
    def rms(self) -> Tensor:
        return self.mean_sq.sqrt()

    def __repr__(self) -> str:
        return f"NeuronStats(width={self.width}, tokens={int(self.count.item())}, tau={self.tau})"


def _all_reduce_(stats: Sequence[NeuronStats], group) -> None:
    """Merge every ``stats`` over all processes: one SUM all_reduce of the additive totals (one flat buffer),
    then one of M2 about the global mean (each rank adds n_i (mean_i − mean)², Chan's merge)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised; call torch.distributed.init_process_group first")
    local = [(s.count.clone(), s.sum.clone()) for s in stats]
    additive = ("count", "sum_abs", "sum", "sum_sq", "count_above")
    parts = [getattr(s, f).reshape(-1) for s in stats for f in additive]
    flat = torch.cat(parts)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for part, reduced in zip(parts, flat.split([p.numel() for p in parts])):
        part.copy_(reduced)
    for s, (n_i, sum_i) in zip(stats, local):
        if n_i > 0:
            delta = sum_i / n_i - s.sum / s.count.clamp_min(1)
            s.m2 += n_i * delta * delta
    m2 = [s.m2.reshape(-1) for s in stats]
    flat = torch.cat(m2)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for part, reduced in zip(m2, flat.split([p.numel() for p in m2])):
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
            keys = set(f.keys())
            table = cls()
            for name, tau in taus.items():
                fields = {fl: f.get_tensor(f"{name}/{fl}") for fl in _FIELDS if f"{name}/{fl}" in keys}
                count = f.get_tensor(f"{name}/count")
                if "m2" not in fields:  # files written before M2 was kept: the (less exact) moment formula
                    fields["m2"] = (fields["sum_sq"] - fields["sum"] ** 2 / count.clamp_min(1)).clamp_min(0)
                table[name] = NeuronStats(count=count, **fields, tau=tau)
            return table


# ---------------------------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_stats(model: torch.nn.Module, batches: Iterable[Mapping[str, Tensor]],
                  sites: Sequence[NeuronSite] | None = None, positions: str = "recall", tau: float = 0.1,
                  progress: bool = True, seed: int = 0, max_batches: int | None = None,
                  desc: str = "neuron statistics", allow_empty: bool = False,
                  recorder=record_neurons) -> StatsTable:
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
    recorder:  the context manager that calls ``fn(site, activations)``, :func:`~manu_lite.hooks.record_neurons`
               (the neurons) or :func:`manu_lite.released.record_outputs` (projection outputs, as the released
               code hooks them).

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
    device = model_device(model)
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
        with torch.random.fork_rng(devices=devices), recorder(model, sites, record):
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
                     "check the model weights, its dtype (fp16 overflows: load with dtype=torch.bfloat16) and the "
                     "inputs of that batch")
