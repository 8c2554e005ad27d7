"""The released MANU code's selection, defects included (``ManuConfig(emulate_released_defects=True)``).

``formulation="reference"`` alone reproduces the released code's *selection rule* with this book's fixes (one
site per real layer, the true neuron activations, padding never counted). This module reproduces what the code's
hooks and masks actually do, so the book can measure what the defects change (REFERENCE_NOTES, "Which
activations are hooked"; DESIGN §2):

1. **Projection outputs, not neurons.** The code hooks the *output* of each MLP projection: language
   ``gate_proj`` (pre-SiLU) and ``up_proj`` (intermediate width) and ``down_proj`` (residual width); vision
   ``fc1`` (pre-GELU) and ``fc2`` (residual width) for LLaVA, ``fc1`` only for Idefics2
   (:func:`output_sites`, :func:`record_outputs`).
2. **Every layer pooled under three names.** Its hard-coded keys (``_21, _22, _23`` / ``_29, _30, _31``) each
   receive the outputs of *all* layers, so the statistics of one projection kind are pooled over the tower's
   layers, and each pooled score enters the tower's threshold three times (:func:`select_released`).
3. **Its selection rule**: vision on image+text, language on text-only (:data:`REFERENCE_RENDERING`),
   :func:`~manu_lite.importance.reference_score`, one threshold per tower over the flat pool with
   ``k = int(p/100 · n)`` and ``score >= threshold``.
4. **The last three layers, identical indices, output rows zeroed.** Masks are applied by key, so only the
   tower's last three layers are pruned, with the same indices in each, by zeroing the *rows* of each hooked
   projection. Rows of ``gate_proj``/``up_proj``/``fc1`` are intermediate neurons: zeroing one (and its bias)
   makes the neuron's activation exactly 0, the same MLP output as removing the neuron, so they become the
   mask's neurons. Rows of ``down_proj``/``fc2`` are residual channels of the MLP output: the mask's
   :attr:`~manu_lite.prune.NeuronMask.channels`.

Kept fixes: token positions follow ``config.positions`` (padding never counted) and statistics stream in float64.
Layers whose output the model never uses (LLaVA's last CLIP layer with ``vision_feature_layer=-2``) are hooked and
pruned as the code does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import TOWERS, ManuConfig
from .importance import REFERENCE_RENDERING, reference_score
from .sites import NeuronSite
from .stats import NeuronStats

LAST_LAYERS = 3  # the code's keys _21-23 / _29-31: the last three layers of a 24-layer CLIP and a 32-layer Llama


@dataclass(frozen=True)
class OutputSite:
    """One projection whose output the released code hooks: ``"language.3.gate_proj"``, width = out_features."""

    site: NeuronSite
    proj: str

    @property
    def tower(self) -> str:
        return self.site.tower

    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def name(self) -> str:
        return f"{self.site.tower}.{self.site.layer}.{self.proj}"

    @property
    def module(self) -> nn.Module:
        return getattr(self.site.mlp, self.proj)

    @property
    def width(self) -> int:
        return int(self.module.out_features)

    @property
    def is_output(self) -> bool:
        """True for ``down_proj``/``fc2``: its rows are residual channels, not neurons."""
        return self.proj == self.site.out_proj


def output_sites(model: nn.Module, sites: Sequence[NeuronSite]) -> list[OutputSite]:
    """The projections the released code hooks for ``sites``: every input projection and the output projection,
    except Idefics2's vision ``fc2`` (commented out in the code). ``ValueError`` for a fused ``gate_up_proj``,
    which the code (LLaVA-1.5 and Idefics2 only) never meets."""
    fused = [s.name for s in sites if s.fused != 1]
    if fused:
        raise ValueError(f"sites {fused} have a fused gate_up_proj; the released code supports LLaVA-1.5 and "
                         "Idefics2 only, so emulate_released_defects=True has nothing to reproduce there. Use "
                         "formulation='reference' without the emulation")
    idefics2 = type(model).__name__.startswith("Idefics2")
    out = []
    for s in sites:
        projs = s.in_projs if (idefics2 and s.tower == "vision") else (*s.in_projs, s.out_proj)
        out += [OutputSite(s, p) for p in projs]
    return out


@contextlib.contextmanager
def record_outputs(model: nn.Module, sites: Iterable[OutputSite],
                   fn: Callable[[OutputSite, Tensor], None]) -> Iterator[list[OutputSite]]:
    """Call ``fn(site, output)`` with each projection's output ``[..., site.width]`` inside the ``with`` block
    (forward hooks, removed on exit, also when the block raises). The recorder of
    :func:`~manu_lite.stats.collect_stats` for :class:`OutputSite`\\ s."""
    sites = list(sites)
    handles = []
    try:
        for site in sites:
            def hook(module, args, output, site=site):
                fn(site, output)
            handles.append(site.module.register_forward_hook(hook))
        yield sites
    finally:
        for handle in handles:
            handle.remove()


def pooled(table: Mapping[str, NeuronStats], sites: Sequence[OutputSite]) -> dict[tuple[str, str], NeuronStats]:
    """(tower, projection) → the statistics of that projection summed over all the tower's layers: what each
    of the code's three identical keys holds."""
    out: dict[tuple[str, str], NeuronStats] = {}
    for s in sites:
        key = (s.tower, s.proj)
        out[key] = table[s.name] if key not in out else out[key] + table[s.name]
    return out


def select_released(stats: Mapping[tuple[str, str], Mapping[str, NeuronStats]], sites: Sequence[OutputSite],
                    config: ManuConfig) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The code's selection from projection-output statistics ``stats[(dataset, rendering)][output site name]``.

    Per tower (scored on :data:`REFERENCE_RENDERING`): one :func:`reference_score` vector per projection from
    the pooled statistics; the flat pool holds each vector ``min(3, layers)`` times (one per key); ``k =
    int(alpha/100 · len(pool))``; selected = score >= the k-th largest. Returns ``(neurons, channels)``, both
    NeuronSite name → indices, for the tower's last three layers: neurons = the union of the input projections'
    rows, channels = the output projection's rows.
    """
    neurons: dict[str, Tensor] = {}
    channels: dict[str, Tensor] = {}
    for tower in TOWERS:
        mine = [s for s in sites if s.tower == tower]
        if tower not in config.towers or not mine:
            continue
        rendering = REFERENCE_RENDERING[tower]
        forget, retain = pooled(stats[("forget", rendering)], mine), pooled(stats[("retain", rendering)], mine)
        last = sorted({s.layer for s in mine})[-LAST_LAYERS:]
        scores = {key: reference_score(forget[key], retain[key], config.statistic_weights, config.epsilon).double()
                  for key in forget}
        flat = torch.cat([score.repeat(len(last)) for score in scores.values()])
        k = int(config.alpha / 100 * flat.numel())
        threshold = torch.topk(flat, k).values[-1] if k > 0 else torch.tensor(float("inf"), dtype=torch.float64)
        chosen = {proj: (score >= threshold).nonzero().squeeze(1) for (_, proj), score in scores.items()}
        for s in (s for s in mine if s.layer in last):
            target = channels if s.is_output else neurons
            name = s.site.name
            target[name] = chosen[s.proj] if name not in target else torch.unique(torch.cat([target[name],
                                                                                             chosen[s.proj]]))
    return neurons, channels
