"""MANU in one call: statistics on forget and retain data in both renderings, scores, selection, a mask.

::

    mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, ManuConfig(alpha=10))
    with mask.applied(model):
        ...                                   # evaluate the unlearned model
    print(report.selection["per_tower"], report.timings)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .config import RENDERINGS, ManuConfig
from .finetune import training_items
from .hooks import candidate_sites, find_sites, unused_sites
from .importance import DATASETS, select, selection_summary
from .stats import collect_stats
from .models import PromptAdapter, iter_batches, prompt_adapter_for
from .prune import NeuronMask, uneditable_sites
from .released import output_sites, record_outputs, select_released


@dataclass
class ManuReport:
    """What a MANU run did: neurons per tower/site, tokens seen, time and memory.

    selection:       :func:`~manu_lite.importance.selection_summary` of the mask.
    tokens:          tokens counted per ``"dataset/rendering"`` (by a language site when there is one).
    timings:         seconds for ``statistics`` and ``selection``.
    excluded_sites:  sites left out because the model never uses their output (site → reason).
    stats_bytes:     bytes held by all streamed statistics (independent of the data size).
    peak_cuda_bytes: peak CUDA memory of the run, ``None`` on CPU.
    stats:           the statistics themselves, ``{(dataset, rendering): StatsTable}`` (not in :meth:`to_dict`).
    """

    config: dict
    selection: dict
    tokens: dict
    timings: dict
    stats_bytes: int
    peak_cuda_bytes: int | None
    excluded_sites: dict = field(default_factory=dict)
    stats: dict = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "stats"}


def manu_unlearn(model, processor, forget, retain, config: ManuConfig | None = None, *,
                 adapter: PromptAdapter | None = None, batch_size: int = 16, progress: bool = True,
                 model_id: str | None = None, collector=collect_stats) -> tuple[NeuronMask, ManuReport]:
    """Score every MLP neuron of ``model`` on forget vs retain data and select the ones to prune.

    forget, retain: training-format profile records (e.g. ``world.forget_train``, ``world.retain_train``); each
                    is encoded in both renderings, image+text and text-only, with answers as labels.
    config:         every open choice (formulation, positions, tau, epsilon, alpha, scope, towers, paper_reduction,
                    paper_vision, emulate_released_defects, prune_mode); ``config.max_batches`` caps the batches per (dataset, rendering). A 4-bit/8-bit
                    or offloaded model needs ``prune_mode="activation"`` (checked before any statistics).
    collector:      the statistics pass, :func:`~manu_lite.stats.collect_stats` or, under ``torchrun``,
                    :func:`manu_lite.distributed.collect_stats_distributed` (every rank gets the same mask).
    Returns the :class:`~manu_lite.prune.NeuronMask` (not applied) and a :class:`ManuReport`.
    """
    config = config or ManuConfig()
    if config.prune_mode == "output_rows":
        raise ValueError("prune_mode='output_rows' zeroes residual channels, but MANU selects neurons; build "
                         "NeuronMask(channel_indices, mode='output_rows') by hand to reproduce the released code, or "
                         "use prune_mode='neuron' or 'activation'")
    if not forget or not retain:
        raise ValueError(f"need forget and retain records, got {len(forget)} and {len(retain)}")
    adapter = adapter or prompt_adapter_for(processor)
    # Sites whose output never reaches the language model (LLaVA's vision layers after vision_feature_layer) are
    # no candidates: not scored, not counted in alpha; the report lists them with the reason.
    excluded = unused_sites(model, config.towers)
    sites = candidate_sites(model, config.towers)
    if not sites:
        raise ValueError(f"no candidate site in towers {config.towers}: all are unused ({sorted(excluded)})")
    if config.prune_mode != "activation":
        problems = uneditable_sites(sites)
        if problems:
            name, problem = next(iter(problems.items()))
            raise ValueError(f"prune_mode={config.prune_mode!r} zeroes weights, but this model's weights cannot be "
                             f"edited in place (site {name}: {problem}; {len(problems)} sites in all). Use "
                             "ManuConfig(prune_mode='activation'), which masks activations with a hook: it is the "
                             "mode for 4-bit (load_in_4bit=True) and offloaded models")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    # The released code's emulation records projection outputs, not neurons, of every layer, used or not
    # (manu_lite.released).
    emulate = config.emulate_released_defects
    if emulate and collector is not collect_stats:
        raise ValueError("emulate_released_defects=True records projection outputs with collect_stats; the "
                         "distributed collector does not support it — run the emulation in one process")
    if emulate:
        sites, excluded = find_sites(model, config.towers), {}
    recorded = output_sites(model, sites) if emulate else sites
    recording = {"recorder": record_outputs} if emulate else {}
    stats = {}
    for dataset, records in zip(DATASETS, (forget, retain)):
        for rendering in RENDERINGS:
            items = training_items(records, (rendering,))
            if not items:
                raise ValueError(f"the {dataset} records have no {rendering} question/answer pairs")
            batches = iter_batches(processor, adapter, items, batch_size)
            stats[(dataset, rendering)] = collector(
                model, batches, recorded, positions=config.positions, tau=config.tau, progress=progress,
                seed=config.seed, max_batches=config.max_batches, desc=f"{dataset} {rendering}", **recording)
    collected = time.perf_counter()
    indices, channels = select_released(stats, recorded, config) if emulate else (select(stats, config), {})
    mask = NeuronMask.from_sites(indices, sites, mode=config.prune_mode, channels=channels,
                                 config=config.to_dict(), alpha=config.alpha,
                                 model_id=model_id or getattr(getattr(model, "config", None), "_name_or_path", ""))
    # Tokens are reported for one language site (all language sites see the same tokens), else one vision site.
    first = next((s.name for s in recorded if s.tower == "language"), recorded[0].name)
    report = ManuReport(
        config=config.to_dict(),
        selection=selection_summary(indices, {s.name: s.width for s in sites}),
        tokens={f"{d}/{r}": int(table[first].count.item()) for (d, r), table in stats.items()},
        timings={"statistics": collected - start, "selection": time.perf_counter() - collected},
        stats_bytes=sum(t.nbytes for table in stats.values() for s in table.values() for t in s.tensors().values()),
        peak_cuda_bytes=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        excluded_sites=excluded,
        stats=stats,
    )
    return mask, report
