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
