"""NeuronStats and StatsTable pinned where the statistics tests did not reach (issue 19, mutation survivors): the
device of fresh totals, the merge refusals' messages, and loading a file written before M2 was kept (the variance
then comes from the moment formula, checked against the population variance of the activations)."""
from __future__ import annotations

import pytest
import torch

from manu_lite.stats import NeuronStats, StatsTable


def test_fresh_totals_are_float64_on_the_requested_device():
    stats = NeuronStats.zeros(3, 0.1, torch.device("meta"))
    assert all(t.device.type == "meta" and t.dtype == torch.float64 for t in stats.tensors().values())


def test_merging_refuses_other_objects_and_other_taus_by_name():
    a = NeuronStats.zeros(2, 0.1)
    with pytest.raises(TypeError, match="^cannot add NeuronStats and int$"):
        a + 3
    with pytest.raises(ValueError, match=r"^cannot add statistics taken at tau=0.1 and tau=0.2; collect both with "
                                         r"the same tau$"):
        a + NeuronStats.zeros(2, 0.2)


def test_a_file_without_m2_loads_with_the_moment_formula(tmp_path):
    from safetensors.torch import load_file, save_file

    acts = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0], [2.0, 2.0]])
    table = StatsTable({"language.0.down_proj": NeuronStats.from_activations(acts, 0.5)})
    table.save(tmp_path / "new.safetensors")
    tensors = load_file(str(tmp_path / "new.safetensors"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    old = {k: v for k, v in tensors.items() if not k.endswith("/m2")}
    assert len(old) == len(tensors) - 1
    save_file(old, str(tmp_path / "old.safetensors"), metadata=metadata)
    loaded = StatsTable.load(tmp_path / "old.safetensors")["language.0.down_proj"]
    want = acts.double().var(0, unbiased=False)  # population variance by hand
    assert torch.allclose(loaded.var, want, rtol=1e-12, atol=1e-12)


class _TwoRanks:
    """``torch.distributed`` for two ranks played by two threads of this process: ``all_reduce`` SUMs the two
    ranks' tensors (read by both before either is overwritten), so the merge runs in-process (mutmut sees it)."""

    def __init__(self, group):
        import threading

        self.group, self.barrier, self.slots, self.ops = group, threading.Barrier(2, timeout=30), {}, []

    def all_reduce(self, tensor, op=None, group=None):
        import threading
        import torch.distributed as dist

        assert op == dist.ReduceOp.SUM and group is self.group
        me = threading.current_thread().name
        self.slots[me] = tensor.clone()
        self.barrier.wait()
        total = sum(self.slots.values())
        self.barrier.wait()
        tensor.copy_(total)
        self.ops.append(me)

    def run(self, work):
        """``work(rank)`` on two threads named 0 and 1; their results."""
        import threading

        out, errors = {}, []

        def go(rank):
            try:
                out[rank] = work(rank)
            except BaseException as error:  # noqa: BLE001  (re-raised below)
                errors.append(error)
                self.barrier.abort()

        threads = [threading.Thread(target=go, args=(r,), name=str(r)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


def _fake_dist(monkeypatch, group):
    import torch.distributed as dist

    fake = _TwoRanks(group)
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", fake.all_reduce)
    return fake


def _assert_same(got: NeuronStats, acts: torch.Tensor, tau: float):
    """Every statistic against plain float64 formulas on the activations of both ranks together (float32 inputs:
    a relative 1e-6)."""
    a = acts.double()
    assert got.count.item() == len(a) and got.tau == tau
    assert torch.allclose(got.sum_abs, a.abs().sum(0), rtol=1e-6, atol=1e-9)
    assert torch.allclose(got.sum, a.sum(0), rtol=1e-6, atol=1e-9)
    assert torch.allclose(got.sum_sq, (a * a).sum(0), rtol=1e-6, atol=1e-9)
    assert torch.equal(got.count_above, (a.abs() > tau).sum(0).double())
    assert torch.allclose(got.m2, ((a - a.mean(0)) ** 2).sum(0), rtol=1e-6, atol=1e-9)


def test_all_reduce_of_a_table_merges_both_ranks_every_statistic_by_hand(monkeypatch):
    group = object()
    fake = _fake_dist(monkeypatch, group)
    g = torch.Generator().manual_seed(11)
    tau = 0.4
    # rank 0 sees 5, 0, 1 and 1 tokens, rank 1 sees 3, 4, 2 and 0, with different means (so M2 needs Chan's correction)
    acts = {(0, "language.0.fc2"): torch.randn(5, 3, generator=g) + 2.0,
            (1, "language.0.fc2"): torch.randn(3, 3, generator=g) - 1.0,
            (0, "vision.1.fc2"): torch.zeros(0, 2),
            (1, "vision.1.fc2"): torch.randn(4, 2, generator=g) * 3.0 + 0.5,
            # one token on rank 0 far from rank 1's two (a rank of n_i = 1 adds its n_i (mean_i - mean)^2 too) ...
            (0, "language.1.fc2"): torch.tensor([[1.5, -0.5]]),
            (1, "language.1.fc2"): torch.tensor([[-2.0, 3.0], [-1.0, 2.5]]),
            # ... and one token in all: M2 stays 0 (the global mean divides by a count of 1)
            (0, "language.2.fc2"): torch.tensor([[0.75, -3.0]]), (1, "language.2.fc2"): torch.zeros(0, 2)}

    def work(rank):
        # the sites inserted in different orders on the two ranks: the table sorts them before the one collective
        names = sorted({n for _, n in acts}, reverse=rank == 1)
        table = StatsTable({n: NeuronStats.from_activations(acts[(rank, n)], tau) for n in names})
        assert table.all_reduce_(group) is table
        return table

    tables = fake.run(work)
    assert sorted(fake.ops) == ["0", "0", "1", "1"]  # two collectives per rank: the totals, then M2
    for table in tables.values():
        for name in {n for _, n in acts}:
            _assert_same(table[name], torch.cat([acts[(0, name)], acts[(1, name)]]), tau)


def test_all_reduce_of_one_site_and_the_uninitialised_refusal(monkeypatch):
    import torch.distributed as dist

    stats = NeuronStats.from_activations(torch.ones(2, 2), 0.5)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match=r"^torch.distributed is not initialised; call "
                                           r"torch.distributed.init_process_group first$"):
        stats.all_reduce_()
    acts = [torch.tensor([[1.0, -2.0], [3.0, 0.25]]), torch.tensor([[-1.0, 4.0], [2.0, 2.0], [0.5, -0.5]])]
    for group in (None, object()):  # the default group, and a group passed through to every collective
        fake = _fake_dist(monkeypatch, group)
        out = fake.run(lambda rank: NeuronStats.from_activations(acts[rank], 0.5).all_reduce_(
            *(() if group is None else (group,))))
        for merged in out.values():
            _assert_same(merged, torch.cat(acts), 0.5)


def test_m2_accumulates_in_float64_over_many_float32_tokens():
    """M2 of 200k float32 tokens far from zero equals the float64 two-pass value to 1e-9: the squared deviations
    are summed in float64 (a float32 total is off by ~1e-7 here)."""
    g = torch.Generator().manual_seed(3)
    acts = (torch.randn(200_000, 4, generator=g, dtype=torch.float64) * 0.3 + 7.0).float()
    stats = NeuronStats.from_activations(acts, 0.5)
    a = acts.double()
    assert torch.allclose(stats.m2, ((a - a.mean(0)) ** 2).sum(0), rtol=1e-9, atol=0)


def test_language_token_and_finite_checks_say_exactly_what_to_do():
    from types import SimpleNamespace

    from manu_lite.stats import _check_finite, check_language_tokens

    empty = {"language.0.fc2": NeuronStats.zeros(2, 0.1)}
    site = [SimpleNamespace(name="language.0.fc2", tower="language")]  # a site as the check reads it
    with pytest.raises(ValueError, match=r"^no language-model token was selected with positions='recall': every "
                                         r"label is -100, so there is no answer token to recall; check the labels "
                                         r"or use positions='all'$"):
        check_language_tokens(empty, site, "recall")
    with pytest.raises(ValueError, match=r"^no language-model token was selected with positions='all'$"):
        check_language_tokens(empty, site, "all")
    table = StatsTable({"language.0.fc2": NeuronStats.from_activations(torch.tensor([[float("nan"), 1.0]]), 0.1)})
    with pytest.raises(ValueError, match=r"^non-finite \(NaN/Inf\) neuron activations at site\(s\) "
                                         r"\['language.0.fc2'\] in batch 3; check the model weights, its dtype "
                                         r"\(fp16 overflows: load with dtype=torch.bfloat16\) and the inputs of "
                                         r"that batch$"):
        _check_finite(table, 3)
