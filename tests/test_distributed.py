"""Statistics at scale: a 2-process data-parallel MANU run (gloo, CPU) equals the single-process run, and
models whose weights accelerate offloads (the ``device_map`` path) give the same statistics and masks."""
import pytest
import torch
import torch.distributed as dist

from manu_lite.config import ManuConfig
from manu_lite.distributed import (collect_stats_distributed, init_distributed, reduce_device, shard,
                                   site_devices)
from manu_lite.finetune import tokenizer_corpus
from manu_lite.hooks import find_sites
from manu_lite.stats import NeuronStats, StatsTable, collect_stats
from manu_lite.manu import manu_unlearn
from manu_lite.models import PromptAdapter, build_tiny
from manu_lite.prune import NeuronMask
from tiny_models import inputs, record
from tiny_models import tiny_llava

# Capped so that each (dataset, rendering) has 3 batches: rank 0 gets two, rank 1 one (uneven shards).
CONFIG = ManuConfig(alpha=10, max_batches=3, scope="tower")
BATCH_SIZE = 8


@pytest.fixture(scope="module")
def world_model(small_world):
    """The small synthetic world and an (untrained) tiny LLaVA with its real processor."""
    model, processor, adapter = build_tiny(tokenizer_corpus(small_world.forget_train + small_world.retain_train,
                                                            PromptAdapter("llava")))
    return small_world, model, processor, adapter


def unlearn_worker(rank, path, model, processor, adapter, forget, retain):
    """One rank: data-parallel manu_unlearn, a pass where rank 1 gets no batch, and one where nobody does."""
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=2)
    try:
        mask, report = manu_unlearn(model, processor, forget, retain, CONFIG, adapter=adapter, batch_size=BATCH_SIZE,
                                    progress=False, collector=collect_stats_distributed)
        _, make_batch = tiny_llava(seed=0)
        llava, _ = tiny_llava(seed=0)
        one = collect_stats_distributed(llava, [make_batch(3, 28, seed=4)], positions="all", progress=False)
        try:
            collect_stats_distributed(llava, iter([]), progress=False)
            empty = None
        except ValueError as exc:
            empty = str(exc)
        torch.save({"indices": mask.indices, "tokens": report.tokens, "empty": empty,
                    "stats": {key: {n: s.tensors() for n, s in t.items()} for key, t in report.stats.items()},
                    "one": {n: s.tensors() for n, s in one.items()}}, f"{path}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def assert_same_stats(got: dict, want: StatsTable):
    assert set(got) == set(want)
    for name, stats in want.items():
        for field, tensor in stats.tensors().items():
            other = got[name][field]
            assert other.dtype == torch.float64
            if field in ("count", "count_above"):
                assert torch.equal(other, tensor), (name, field)
            else:  # sums of the same per-batch sums, added in another order
                assert torch.allclose(other, tensor, rtol=1e-12, atol=1e-12), (name, field)


def test_two_processes_equal_one(world_model, tmp_path):
    world, model, processor, adapter = world_model
    forget, retain = world.forget_train, world.retain_train[:3]
    # fork: the children inherit the built model and processor (spawn would re-import torch: ~10 s).
    torch.multiprocessing.start_processes(unlearn_worker, args=(str(tmp_path), model, processor, adapter, forget,
                                                                retain), nprocs=2, start_method="fork")
    mask, report = manu_unlearn(model, processor, forget, retain, CONFIG, adapter=adapter, batch_size=BATCH_SIZE,
                                progress=False)
    llava, make_batch = tiny_llava(seed=0)
    one = collect_stats(llava, [make_batch(3, 28, seed=4)], positions="all", progress=False)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["tokens"] == report.tokens and all(n > 0 for n in report.tokens.values())
        assert set(result["stats"]) == set(report.stats) and len(report.stats) == 4
        for key, table in report.stats.items():
            assert_same_stats(result["stats"][key], table)
        assert result["indices"].keys() == mask.indices.keys() and len(mask) > 0
        for name, idx in mask.indices.items():  # every rank selects exactly the single-process neurons
            assert torch.equal(result["indices"][name], idx), name
        assert_same_stats(result["one"], one)  # rank 1 had no batch: it contributes zeros
        assert "no batches on any rank" in result["empty"]  # raised on both ranks, none left waiting


def test_distributed_helpers_without_a_process_group(monkeypatch):
    assert shard(list(range(7)), 1, 2) == [1, 3, 5]
    assert list(shard(iter(range(7)), 0, 3)) == [0, 3, 6]
    with pytest.raises(ValueError, match="outside"):
        shard([1], 2, 2)
    model, make_batch = tiny_llava(seed=0)
    with pytest.raises(RuntimeError, match="not initialised.*torchrun"):
        collect_stats_distributed(model, [make_batch(2, 24)], progress=False)
    with pytest.raises(RuntimeError, match="not initialised"):
        reduce_device()
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match=r"\['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\].*torchrun"):
        init_distributed()


def test_stats_table_moves_to_one_device():
    table = StatsTable({"language.0.down_proj": NeuronStats.from_activations(torch.randn(5, 4), 0.1),
                        "vision.0.fc2": NeuronStats.from_activations(torch.randn(3, 2), 0.1)})
    assert table.devices == {torch.device("cpu")}
    moved = table.to("meta")  # any other device: the statistics travel whole, float64 kept
    assert moved.devices == {torch.device("meta")}
    assert all(s.sum.dtype == torch.float64 and s.tau == 0.1 for s in moved.values())
    assert table["vision.0.fc2"].to("cpu") is table["vision.0.fc2"]  # already there: no copy


def test_offloaded_model_stats_and_masks():
    """accelerate's offload (as ``device_map`` does when a model does not fit) leaves weights on ``meta``:
    inputs must go to the execution device, activation masks must follow the activations, and weight masks
    must refuse rather than silently zero a placeholder."""
    from accelerate import cpu_offload

    model, make_batch = tiny_llava(seed=0)
    batch = make_batch(3, 28, seed=1)
    sites = find_sites(model)
    indices = {s.name: torch.arange(2, s.width, 7) for s in sites}
    want = collect_stats(model, [batch], sites, progress=False)
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        _, want_logits = record(model, batch, sites)

    offloaded, _ = tiny_llava(seed=0)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    sites = find_sites(offloaded)
    assert next(offloaded.parameters()).device.type == "meta"
    assert set(site_devices(sites).values()) == {torch.device("cpu")}  # the execution device, not meta
    got = collect_stats(offloaded, [batch], sites, progress=False)
    for name, stats in want.items():
        assert torch.equal(got[name].sum_sq, stats.sum_sq) and torch.equal(got[name].count, stats.count)
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(offloaded):
        _, got_logits = record(offloaded, batch, sites)
    assert torch.equal(got_logits, want_logits)
    with pytest.raises(ValueError, match=r"offloaded \(on the meta device.*use mode='activation'"):
        NeuronMask.from_sites(indices, sites, mode="neuron").apply(offloaded)
    with torch.no_grad():  # refused before touching anything; the model still computes what it did
        assert torch.equal(offloaded(**inputs(batch)).logits, model(**inputs(batch)).logits)
