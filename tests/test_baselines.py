"""The baselines' losses on hand-checkable cases, and the unlearning loop on the small world."""
from __future__ import annotations

import copy

import pytest
import torch

from manu_lite.baselines import (FrozenReference, UnlearnConfig, answer_kl, ga_loss, graddiff_loss, kl_loss,
                                 npo_loss, unlearn_with)
from manu_lite.finetune import training_items
from manu_lite.models import answer_nll, encode



@pytest.fixture(scope="module")
def batches(small_world, small_vanilla):
    """One forget batch and one retain batch of three items each (text-only: different answer lengths)."""
    _, processor, adapter = small_vanilla
    forget = training_items(small_world.forget_train, ("text_only",))[:3]
    retain = training_items(small_world.retain_train, ("text_only",))[:3]
    return encode(processor, adapter, forget), encode(processor, adapter, retain)


def _grad(model, loss_fn) -> torch.Tensor:
    """The flattened gradient of ``loss_fn(model)`` over every parameter."""
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def _perturbed(model, scale=0.02, seed=0):
    """A copy of ``model`` with small seeded noise on every weight: a reference that differs from the model."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other


def test_ga_gradient_is_negated_nll_gradient(small_vanilla, batches):
    model = copy.deepcopy(small_vanilla[0])
    forget, _ = batches
    ga = _grad(model, lambda m: ga_loss(m, forget))
    nll = _grad(model, lambda m: answer_nll(m, forget))
    assert ga.abs().sum() > 0
    torch.testing.assert_close(ga, -nll)


def test_graddiff_with_zero_retain_weight_is_ga(small_vanilla, batches):
    model = copy.deepcopy(small_vanilla[0])
    forget, retain = batches
    assert graddiff_loss(model, forget, retain, 0.0).item() == pytest.approx(ga_loss(model, forget).item())
    torch.testing.assert_close(_grad(model, lambda m: graddiff_loss(m, forget, retain, 0.0)),
                               _grad(model, lambda m: ga_loss(m, forget)))
    # and with weight 1 the retain NLL gradient is added
    torch.testing.assert_close(_grad(model, lambda m: graddiff_loss(m, forget, retain, 1.0)),
                               _grad(model, lambda m: ga_loss(m, forget)) + _grad(model, lambda m: answer_nll(m, retain)))


def test_kl_is_zero_at_the_reference_and_positive_elsewhere(small_vanilla, batches):
    model = copy.deepcopy(small_vanilla[0])
    forget, retain = batches
    reference = FrozenReference(model, lora=False)
    ref_logits = reference.logits(retain)
    assert answer_kl(model, ref_logits, retain).item() == pytest.approx(0.0, abs=1e-6)
    # at the reference, KL's gradient vanishes: the kl loss then has GA's gradient
    # (compared as whole vectors: single float32 entries carry ~1e-6 of rounding noise)
    kl_grad, ga_grad = (_grad(model, lambda m: kl_loss(m, forget, retain, ref_logits)),
                        _grad(model, lambda m: ga_loss(m, forget)))
    assert (kl_grad - ga_grad).norm() <= 1e-4 * ga_grad.norm()
    assert answer_kl(_perturbed(model), ref_logits, retain).item() > 1e-4


def test_npo_gradient_direction_approaches_ga_as_beta_vanishes(small_vanilla, batches):
    model = _perturbed(small_vanilla[0], scale=0.05)
    forget, _ = batches
    reference_nll = FrozenReference(small_vanilla[0], lora=False).sequence_nll(forget)
    # the sequences sit at different log-ratios, so a finite beta weights them unequally
    assert (answer_nll(model, forget, per_sequence=True) - reference_nll).abs().min() > 0.1
    ga = _grad(model, lambda m: ga_loss(m, forget))
    cosines = [torch.nn.functional.cosine_similarity(_grad(model, lambda m: npo_loss(m, forget, reference_nll, b)),
                                                     ga, dim=0).item() for b in (4.0, 0.4, 1e-3)]
    assert cosines[-1] > 1 - 1e-5
    assert cosines[0] < cosines[-1]


def test_npo_at_the_reference_is_2_log_2(small_vanilla, batches):
    """x = 0 for every sequence: −(2/β)·log σ(0) = (2/β)·log 2."""
    model = small_vanilla[0]
    forget, _ = batches
    reference_nll = answer_nll(model, forget, per_sequence=True).detach()
    assert npo_loss(model, forget, reference_nll, 0.4).item() == pytest.approx(2 / 0.4 * torch.log(torch.tensor(2.)).item(), rel=1e-5)


def test_unlearning_raises_forget_loss_and_is_seeded(small_world, small_vanilla, batches):
    vanilla, processor, adapter = small_vanilla
    forget, _ = batches
    config = UnlearnConfig(renderings="text_only", steps=3, lr=5e-4, batch_size=4)
    snapshot = [p.clone() for p in vanilla.parameters()]
    runs = []
    for method in ("ga", "graddiff", "ga"):
        model = copy.deepcopy(vanilla)
        report = unlearn_with(method, model, processor, adapter, small_world, config, progress=False)
        assert len(report["losses"]) == 3 and report["forget_items"] > 0
        runs.append(model)
    with torch.no_grad():
        assert answer_nll(runs[0], forget) > answer_nll(vanilla, forget) + 0.1
    for a, b in zip(runs[0].parameters(), runs[2].parameters()):
        assert torch.equal(a, b)  # same seed, same weights
    # only the copies were unlearned
    assert all(torch.equal(a, b) for a, b in zip(snapshot, vanilla.parameters()))


def test_graddiff_with_zero_weight_unlearns_like_ga(small_world, small_vanilla):
    vanilla, processor, adapter = small_vanilla
    config = UnlearnConfig(renderings="both", steps=2, batch_size=4, retain_weight=0.0)
    ga, gd = copy.deepcopy(vanilla), copy.deepcopy(vanilla)
    unlearn_with("ga", ga, processor, adapter, small_world, config, progress=False)
    unlearn_with("graddiff", gd, processor, adapter, small_world, config, progress=False)
    for a, b in zip(ga.parameters(), gd.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["kl", "npo"])
def test_lora_uses_the_disabled_adapter_as_reference(small_world, small_vanilla, method):
    if __import__("os").environ.get("CI") == "true":  # CI must run it: a missing peft fails loudly, never skips
        __import__("peft")
    else:
        pytest.importorskip("peft")
    vanilla, processor, adapter = small_vanilla
    model = copy.deepcopy(vanilla)
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = unlearn_with(method, model, processor, adapter, small_world,
                          UnlearnConfig(steps=2, batch_size=4, lr=1e-2, lora=True, lora_r=4), progress=False)
    assert all(torch.isfinite(torch.tensor(report["losses"])))
    # merged back into the same module tree: same parameter names, language weights changed, vision untouched
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    changed = [n for n in after if not torch.equal(after[n], before[n])]
    assert changed and all("vision" not in n for n in changed)


def test_unknown_choices_are_refused(small_world, small_vanilla):
    with pytest.raises(ValueError, match="renderings"):
        UnlearnConfig(renderings="image")
    with pytest.raises(ValueError, match="method"):
        unlearn_with("gd", *small_vanilla, small_world)


def test_lora_methods_share_one_model_without_copies_and_each_starts_from_vanilla(small_world, small_vanilla,
                                                                                  batches, monkeypatch):
    """The large-model path: fresh adapters per method on the one loaded model (no deep copy of any module, the
    base tensors never reallocated or written), KL's and NPO's reference the disabled adapters, and after a method
    the model is the vanilla model again, so the next method trains exactly as on a freshly loaded one."""
    if __import__("os").environ.get("CI") == "true":
        __import__("peft")
    else:
        pytest.importorskip("peft")
    from manu_lite.baselines import lora_adapters

    vanilla, processor, adapter = small_vanilla
    fresh = copy.deepcopy(vanilla)  # the test's own copies, made before deep copies are watched
    model = copy.deepcopy(vanilla)
    _, retain = batches
    with torch.no_grad():
        vanilla_logits = model(**{k: v for k, v in retain.items() if k != "labels"}).logits
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    real_deepcopy = copy.deepcopy

    def watched(obj, *args, **kwargs):
        assert not isinstance(obj, torch.nn.Module), f"a deep copy of a {type(obj).__name__} was made"
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", watched)
    config = UnlearnConfig(renderings="text_only", steps=2, batch_size=4, lr=1e-2, lora=True, lora_r=4)
    losses = {}
    for method in ("kl", "npo"):
        with lora_adapters(model, config.lora_r, config.seed) as network:
            losses[method] = unlearn_with(method, network, processor, adapter, small_world, config,
                                          progress=False)["losses"]
            with torch.no_grad():
                adapted = network(**{k: v for k, v in retain.items() if k != "labels"}).logits
            assert not torch.allclose(adapted, vanilla_logits), "the trained adapters must change the model"
            base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                    for n, p in network.named_parameters() if "lora_" not in n}
            assert all(base[n].data_ptr() == ptr and torch.equal(base[n], w) for n, (ptr, w) in before.items())
        after = dict(model.named_parameters())
        assert set(after) == set(before)  # no adapter left behind
        assert all(after[n].data_ptr() == ptr and torch.equal(after[n], w) for n, (ptr, w) in before.items())
        with torch.no_grad():
            assert torch.equal(model(**{k: v for k, v in retain.items() if k != "labels"}).logits, vanilla_logits)
    monkeypatch.setattr(copy, "deepcopy", real_deepcopy)
    # the second method (after the first one's adapters were removed) trains exactly as on a fresh vanilla model
    with lora_adapters(fresh, config.lora_r, config.seed) as network:
        assert unlearn_with("npo", network, processor, adapter, small_world, config, progress=False)["losses"] == \
            losses["npo"]


def test_lazy_encoding_holds_a_bounded_cache_and_gives_the_same_encodings(small_world):
    """Baselines keep encodings for later epochs only up to a byte budget; dropped ones are encoded again, equal."""
    from manu_lite.baselines import _LazyEncoding, _nbytes
    from manu_lite.finetune import training_items
    from manu_lite.models import build_tiny, encode_item

    _, processor, adapter = build_tiny(["USER: <image>\nWho is this person?\nASSISTANT: Ann Lee."] * 10)
    items = training_items(small_world.forget_train, ("image_text",))[:6]
    one = _nbytes(encode_item(processor, adapter, items[0]))
    lazy = _LazyEncoding(processor, adapter, items, max_bytes=int(2.5 * one))
    for i in list(range(6)) + [0, 5]:
        got = lazy[i]
        want = encode_item(processor, adapter, items[i])
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert lazy.held <= lazy.max_bytes and len(lazy.cache) <= 2
    assert lazy.held == sum(_nbytes(e) for e in lazy.cache.values())
    assert list(lazy.cache) == [0, 5]  # least recently used dropped first
