"""Baselines pinned where the baseline tests did not reach (issue 19, mutation survivors): the default retain weight
of GradDiff and KL (1), GradDiff's w = 0 never running the retain batch, NPO's beta bound, and the report of a run
(its keys, on_step receiving the trained network)."""
from __future__ import annotations

import copy

import pytest
import torch

from manu_lite.baselines import (FrozenReference, UnlearnConfig, answer_kl, graddiff_loss, kl_loss, unlearn_with)
from manu_lite.models import answer_nll
from tiny_models import tiny_llava


@pytest.fixture(scope="module")
def tiny():
    model, make_batch = tiny_llava(seed=2)
    return model.eval(), make_batch(2, 20, seed=1), make_batch(2, 20, seed=2)


def test_retain_weight_defaults_to_one(tiny):
    model, forget, retain = tiny
    with torch.no_grad():
        by_hand = -answer_nll(model, forget) + answer_nll(model, retain)
        assert torch.allclose(graddiff_loss(model, forget, retain), by_hand)
        reference = FrozenReference(copy.deepcopy(model), lora=False).logits(retain)
        kl = answer_kl(model, reference, retain)
        assert torch.allclose(kl_loss(model, forget, retain, reference), -answer_nll(model, forget) + kl)


def test_graddiff_with_zero_weight_never_runs_the_retain_batch(tiny):
    model, forget, _ = tiny
    with torch.no_grad():
        loss = graddiff_loss(model, forget, {"not": "a batch"}, retain_weight=0.0)  # would fail if it were run
        assert torch.allclose(loss, -answer_nll(model, forget))


def test_npo_beta_must_be_positive():
    with pytest.raises(ValueError, match=r"^beta=0 must be > 0 \(NPO tends to gradient ascent as beta -> 0\)$"):
        UnlearnConfig(beta=0)
    assert UnlearnConfig(beta=1e-3).beta == 1e-3


def test_the_report_and_on_step_see_the_trained_network(small_world, small_vanilla):
    vanilla, processor, adapter = small_vanilla
    model = copy.deepcopy(vanilla)
    seen = []
    report = unlearn_with("ga", model, processor, adapter, small_world, UnlearnConfig(steps=2, batch_size=4),
                          progress=False, on_step=lambda step, network: seen.append((step, network)))
    assert [step for step, _ in seen] == [1, 2] and all(network is model for _, network in seen)
    assert set(report) == {"method", "config", "losses", "forget_items", "retain_items", "seconds"}
    assert report["config"] == UnlearnConfig(steps=2, batch_size=4).to_dict() and report["seconds"] > 0
    assert (report["method"], len(report["losses"]), report["retain_items"]) == ("ga", 2, 0)
