"""Statistics at scale: data-parallel passes over ``torch.distributed``, and models split over devices.

**Data parallel** (``torchrun``): every process holds a replica of the model, takes every ``world_size``-th
batch, streams its own :class:`~manu_lite.stats.StatsTable`, and one ``all_reduce`` sums the tables. The
statistics are sums, so the merged table equals a single-process pass over all batches (up to float64 rounding
of the order of additions), and every rank then selects the same neurons::

    # torchrun --nproc_per_node 4 unlearn.py
    from manu_lite.distributed import collect_stats_distributed, init_distributed
    from manu_lite.manu import manu_unlearn

    rank, world_size = init_distributed()               # NCCL on GPUs (one per process), else gloo
    model, processor, adapter = load_mllm(name, dtype="bfloat16", device_map={"": rank})
    mask, report = manu_unlearn(model, processor, forget, retain, config, collector=collect_stats_distributed)
    if rank == 0:
        mask.save("out/mask")

**Model parallel** (``device_map="auto"``, accelerate): one process, layers spread over GPUs (or offloaded to
CPU). :func:`~manu_lite.stats.collect_stats` keeps each site's totals on the device its activations arrive
on — nothing crosses devices per batch — and :meth:`StatsTable.to` merges them on one device at the end
(:func:`site_devices` says where each site runs). Both combine: each rank may hold a ``device_map`` model; its
table is moved to the collective's device (:func:`reduce_device`) just before the ``all_reduce``.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .hooks import NeuronSite, execution_device, find_sites
from .stats import StatsTable, check_language_tokens, collect_stats


def _dist():
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun and call "
                           "manu_lite.distributed.init_distributed() (or torch.distributed.init_process_group) first")
    return dist


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``, ``LOCAL_RANK``); returns ``(rank, world_size)``. Idempotent.

    backend: default ``"nccl"`` when CUDA is available (and then this process uses GPU ``LOCAL_RANK``), else
             ``"gloo"``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"environment variables {missing} are not set: start the script with "
                           "`torchrun --nproc_per_node N script.py`, or call torch.distributed.init_process_group")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def reduce_device(group=None) -> torch.device:
    """The device a collective of ``group`` runs on: this process's GPU for NCCL, the CPU otherwise."""
    dist = _dist()
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: Iterable, rank: int, world_size: int) -> Sequence | Iterator:
    """Every ``world_size``-th item starting at ``rank`` (a list slice for a sequence, so it keeps ``len``).

    Round-robin keeps the shards' sizes within one of each other whatever the order of the items.
    """
    if not (0 <= rank < world_size):
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if isinstance(items, Sequence):
        return items[rank::world_size]
    return (item for i, item in enumerate(items) if i % world_size == rank)


def _capped(batches: Iterable, max_batches: int | None) -> Iterable:
    if max_batches is None:
        return batches
    if isinstance(batches, Sequence):
        return batches[:max_batches]
    return (b for i, b in zip(range(max_batches), batches))


def collect_stats_distributed(model: torch.nn.Module, batches: Iterable[Mapping[str, Tensor]],
                              sites: Sequence[NeuronSite] | None = None, *, positions: str = "recall",
                              tau: float = 0.1, progress: bool = True, seed: int = 0,
                              max_batches: int | None = None, desc: str = "neuron statistics",
                              group=None) -> StatsTable:
    """:func:`~manu_lite.stats.collect_stats` over the processes of ``group``: the same arguments and result.

    Every rank passes the *same* batch stream (same order); rank r keeps batches r, r + W, r + 2W, … (W = world
    size), after ``max_batches`` caps the stream, so the cap means what it means in one process. Each rank streams
    its shard (a rank may get none), then one ``all_reduce`` sums the tables on :func:`reduce_device`; every
    rank returns the merged table there. Only rank 0 shows a progress bar. Raises like ``collect_stats`` when
    no rank saw a batch or no language token was selected — on every rank, so none is left waiting.
    """
    dist = _dist()
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    sites = list(find_sites(model) if sites is None else sites)
    mine = shard(_capped(batches, max_batches), rank, world_size)
    seen = [len(mine)] if isinstance(mine, Sequence) else [0]
    if not isinstance(mine, Sequence):
        def counted(stream):
            for batch in stream:
                seen[0] += 1
                yield batch
        mine = counted(mine)
    local = collect_stats(model, mine, sites, positions=positions, tau=tau, progress=progress and rank == 0,
                          seed=seed, desc=desc, allow_empty=True)
    device = reduce_device(group)
    table = local.to(device).all_reduce_(group)
    n_batches = torch.tensor([seen[0]], dtype=torch.float64, device=device)
    dist.all_reduce(n_batches, group=group)
    if n_batches.item() == 0:
        raise ValueError("collect_stats_distributed got no batches on any rank; pass a non-empty iterable")
    check_language_tokens(table, sites, positions)
    return table


def site_devices(sites: Sequence[NeuronSite]) -> dict[str, torch.device]:
    """Site name → the device its activations arrive on (the output projection's
    :func:`~manu_lite.hooks.execution_device`). With ``device_map="auto"`` this is where
    :func:`~manu_lite.stats.collect_stats` keeps the site's totals."""
    return {site.name: execution_device(site.out_module) or execution_device(site.mlp) for site in sites}
