"""MANU in one call: statistics on forget and retain data in both renderings, scores, selection, a mask.

::

    mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, ManuConfig(alpha=10))
    with mask.applied(model):
        ...                                   # evaluate the unlearned model
    print(report.selection["per_tower"], report.timings)
"""
from __future__ import annotations

import dataclasses
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


def weights_problem(model, sites=None) -> str | None:
    """Why ``model``'s MLP weights cannot be zeroed in place, or ``None`` when they can.

    Quantized: a ``quantization_config`` (bitsandbytes 4-bit/8-bit, GPTQ, AWQ, …) or ``is_quantized``; offloaded:
    an ``hf_device_map`` that sends modules to ``"disk"``, or to ``"cpu"`` next to GPUs, or a parameter on the
    ``meta`` device; and any of ``sites`` whose projection weights :func:`~manu_lite.prune.uneditable_sites` flags
    (e.g. a ``Params4bit`` put in by hand). A model held whole on the CPU (``{"": "cpu"}``) is editable.
    """
    config = getattr(model, "config", None)
    quant = getattr(model, "quantization_config", None) or getattr(config, "quantization_config", None)
    if quant is not None or getattr(model, "is_quantized", False):
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        return f"the model is quantized (quantization_config: {getattr(method, 'value', method) or quant!r})"
    placed = {str(v) for v in (getattr(model, "hf_device_map", None) or {}).values()}
    if "disk" in placed or ("cpu" in placed and placed - {"cpu"}):
        return f"the model is offloaded (hf_device_map places modules on {sorted(placed)})"
    meta = next((name for name, p in model.named_parameters() if p.device.type == "meta"), None)
    if meta is not None:
        return f"parameter {meta} is on the meta device (offloaded: accelerate loads it at each forward)"
    problems = uneditable_sites(sites) if sites is not None else {}
    if problems:
        name, problem = next(iter(problems.items()))
        return f"site {name}: {problem}; {len(problems)} sites in all"
    return None


def choose_prune_mode(model, requested: str = "auto", sites=None) -> str:
    """The prune mode MANU uses on ``model``: ``requested``, with ``"auto"`` resolved from its weights.

    ``"auto"`` gives ``"activation"`` (a hook masks the neurons' activations; weights untouched) when
    :func:`weights_problem` finds quantized or offloaded weights, else ``"neuron"`` (the weights are zeroed, so
    nothing runs at inference). A forced weight mode (``"neuron"``, ``"output_rows"``) on such weights raises
    ``ValueError`` naming the reason and the fix.
    """
    problem = weights_problem(model, sites)
    if requested == "auto":
        return "activation" if problem else "neuron"
    if requested != "activation" and problem:
        raise ValueError(f"prune_mode={requested!r} zeroes weights, but this model's weights cannot be edited in "
                         f"place ({problem}). Use ManuConfig(prune_mode='activation'), or leave the default "
                         "prune_mode='auto', which picks it: a hook masks the activations, the mode for 4-bit "
                         "(load_in_4bit=True) and offloaded models")
    return requested


def manu_unlearn(model, processor, forget, retain, config: ManuConfig | None = None, *,
                 adapter: PromptAdapter | None = None, batch_size: int = 16, progress: bool = True,
                 model_id: str | None = None, collector=collect_stats,
                 strict: bool = True) -> tuple[NeuronMask, ManuReport]:
    """Score every MLP neuron of ``model`` on forget vs retain data and select the ones to prune.

    forget, retain: training-format profile records (e.g. ``world.forget_train``, ``world.retain_train``); each
                    is encoded in both renderings, image+text and text-only, with answers as labels.
    config:         every open choice (formulation, positions, tau, epsilon, alpha, scope, towers, paper_reduction,
                    paper_vision, emulate_released_defects, prune_mode); ``config.max_batches`` caps the batches
                    per (dataset, rendering). ``prune_mode="auto"`` (the default) is resolved by
                    :func:`choose_prune_mode` before any statistics: ``"activation"`` for 4-bit/8-bit or offloaded
                    weights, else ``"neuron"``; the mask and the report carry the resolved mode.
    collector:      the statistics pass, :func:`~manu_lite.stats.collect_stats` or, under ``torchrun``,
                    :func:`manu_lite.distributed.collect_stats_distributed` (every rank gets the same mask).
    strict:         passed to site discovery (:func:`~manu_lite.sites.find_sites`): ``False`` warns instead of
                    raising when a requested tower or a layer has no MLP site, and goes on with the sites found.
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
    excluded = unused_sites(model, config.towers, strict)
    sites = candidate_sites(model, config.towers, strict)
    if not sites:
        raise ValueError(f"no candidate site in towers {config.towers}: all are unused ({sorted(excluded)})")
    config = dataclasses.replace(config, prune_mode=choose_prune_mode(model, config.prune_mode, sites))
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
        sites, excluded = find_sites(model, config.towers, strict), {}
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
