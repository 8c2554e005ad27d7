"""Pruning with non-zero biases (issue 19): the tiny CLIP's biases are exactly 0 at initialisation, so a mask that
forgot the input projections' biases (or zeroed the output projection's) would pass every other pruning test.
Here every bias of the tiny LLaVA is set to seeded non-zero values first."""
from __future__ import annotations

import pytest
import torch

from manu_lite.hooks import find_sites
from manu_lite.prune import NeuronMask
from tiny_models import assert_state_equal, record, snapshot, tiny_llava


@pytest.fixture(scope="module")
def biased():
    model, make_batch = tiny_llava(seed=3)
    g = torch.Generator().manual_seed(7)
    n_biases = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))  # in [0.5, 1.5): never 0
                n_biases += 1
    assert n_biases > 0
    return model, make_batch(3, 28, seed=1)


def test_vision_sites_have_biased_input_projections(biased):
    model, _ = biased
    vision = [s for s in find_sites(model) if s.tower == "vision"]
    assert vision and all(getattr(m, "bias", None) is not None and (m.bias != 0).all()
                          for s in vision for m in s.in_modules)


@pytest.mark.parametrize("mode", ["neuron", "activation"])
def test_pruned_neurons_are_exactly_zero_despite_biases(biased, mode):
    model, batch = biased
    sites = find_sites(model)
    g = torch.Generator().manual_seed(0)
    indices = {s.name: torch.randperm(s.width, generator=g)[: s.width // 4].sort().values for s in sites}
    before, _ = record(model, batch, sites)
    state = snapshot(model)
    with NeuronMask.from_sites(indices, sites, mode=mode).applied(model):
        after, _ = record(model, batch, sites)
    assert_state_equal(model, state)  # biases restored bit-exactly too
    for s in sites:
        idx = indices[s.name]
        kept = torch.ones(s.width, dtype=torch.bool)
        kept[idx] = False
        assert torch.all(after[s.name][..., idx] == 0), s.name
        assert before[s.name][..., idx].abs().min() > 0 or s.tower == "language", s.name  # biases made them non-zero
        if s.tower == "vision":
            # The first vision layer's kept neurons see the same inputs: bit-identical (later layers see the change).
            if s.layer == 0:
                assert torch.equal(after[s.name][..., kept], before[s.name][..., kept]), s.name


def test_neuron_and_activation_modes_agree_with_biases(biased):
    model, batch = biased
    sites = find_sites(model)
    g = torch.Generator().manual_seed(1)
    indices = {s.name: torch.randperm(s.width, generator=g)[: s.width // 3] for s in sites}
    _, plain = record(model, batch, sites)
    with NeuronMask.from_sites(indices, sites, mode="neuron").applied(model):
        _, by_weights = record(model, batch, sites)
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        _, by_hook = record(model, batch, sites)
    assert not torch.allclose(plain, by_hook, atol=1e-4)  # the pruning did change the output
    # Zeroing weights must equal zeroing activations: the output projection's bias is left alone, the input
    # projections' bias rows are zeroed with their weight rows.
    assert torch.allclose(by_weights, by_hook, atol=1e-5, rtol=1e-5)
