"""Baselines pinned to their meaning (issue 19): each test fails on a named one-line bug.

- KL direction: ``answer_kl`` equals a hand-computed KL(p_ref ‖ p_θ) on lopsided logits, where KL(p_θ ‖ p_ref)
  is far from it.
- NPO: the gradient equals −(2/B) Σ_s σ(−β x_s) ∇NLL_s at β = 0.4 with per-sequence x_s (the batch-mean
  log-ratio gives other weights).
- The frozen reference: stays the vanilla model while the live model takes steps.
- GradDiff/KL retain batches: drawn from the retain people only; GradDiff's first loss equals −NLL_f + w·NLL_r.
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import manu_lite.baselines as baselines
from manu_lite.baselines import FrozenReference, UnlearnConfig, answer_kl, npo_loss, unlearn_with
from manu_lite.finetune import training_items
from manu_lite.models import answer_nll, encode, encode_item


class _FixedLogits(torch.nn.Module):
    """A stub model whose logits are a given tensor (whatever the inputs)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, **_):
        return SimpleNamespace(logits=self.logits)


def test_answer_kl_is_kl_of_reference_to_model_by_hand():
    # One sequence of 3 positions over a vocabulary of 3; position 0 predicts token 1 (an answer token), position
    # 1 predicts token 2 (an answer token), position 2 has no next token. Lopsided: p_ref nearly one-hot, p_θ flat.
    ref_logits = torch.tensor([[[6.0, 0.0, 0.0], [0.0, 5.0, -3.0], [0.0, 0.0, 0.0]]])
    cur_logits = torch.tensor([[[0.0, 0.2, 0.1], [1.0, 0.0, 2.0], [9.0, 9.0, 9.0]]])
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[-100, 1, 2]])}

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    def kl(p, q):  # KL(p ‖ q), by hand
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    expected = sum(kl(softmax(ref_logits[0, t].tolist()), softmax(cur_logits[0, t].tolist())) for t in (0, 1)) / 2
    reverse = sum(kl(softmax(cur_logits[0, t].tolist()), softmax(ref_logits[0, t].tolist())) for t in (0, 1)) / 2
    assert abs(expected - reverse) > 0.5  # the case tells the two directions apart
    got = answer_kl(_FixedLogits(cur_logits), ref_logits, batch).item()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def forget_batch(small_world, small_vanilla):
    _, processor, adapter = small_vanilla
    items = training_items(small_world.forget_train, ("text_only",))[:4]
    return encode(processor, adapter, items)


def _flat_grad(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def test_npo_gradient_is_per_sequence_weighted_ascent(small_vanilla, forget_batch):
    model = copy.deepcopy(small_vanilla[0]).eval()
    # Reference NLLs set so that the log-ratios x_s = NLL_θ(s) − NLL_ref(s) are -3, 0, 2, 5: very different
    # per-sequence weights σ(−β x_s) (a batch-mean log-ratio would weight every sequence alike).
    beta = 0.4
    with torch.no_grad():
        nll_now = answer_nll(model, forget_batch, per_sequence=True)
    ref_nll = nll_now - torch.tensor([-3.0, 0.0, 2.0, 5.0])
    x = nll_now - ref_nll
    weights = torch.sigmoid(-beta * x)
    assert weights.max() - weights.min() > 0.1  # the per-sequence weights really differ
    batch_size = len(x)

    model.zero_grad(set_to_none=True)
    npo_loss(model, forget_batch, ref_nll, beta=beta).backward()
    got = _flat_grad(model)

    model.zero_grad(set_to_none=True)
    nll = answer_nll(model, forget_batch, per_sequence=True)
    (-(2.0 / batch_size) * (weights.detach() * nll).sum()).backward()
    expected = _flat_grad(model)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7 * expected.abs().max().item())


def test_frozen_reference_stays_the_vanilla_model_after_a_step(small_vanilla, forget_batch):
    model = copy.deepcopy(small_vanilla[0]).eval()
    reference = FrozenReference(model, lora=False)
    before_logits = reference.logits(forget_batch).clone()
    before_nll = reference.sequence_nll(forget_batch).clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    (-answer_nll(model, forget_batch)).backward()
    optimizer.step()
    with torch.no_grad():
        moved = model(**{k: v for k, v in forget_batch.items() if k != "labels"}).logits
    assert (moved - before_logits).abs().max() > 1e-3  # the live model did move
    assert torch.equal(reference.logits(forget_batch), before_logits)
    assert torch.equal(reference.sequence_nll(forget_batch), before_nll)


def _recording(monkeypatch, name):
    """Wrap ``baselines.<name>`` so each call's arguments are kept."""
    calls = []
    original = getattr(baselines, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(baselines, name, wrapper)
    return calls


def test_npo_reference_nll_is_the_vanilla_models_at_every_step(small_world, small_vanilla, monkeypatch):
    vanilla, processor, adapter = small_vanilla
    frozen = copy.deepcopy(vanilla).eval()
    calls = _recording(monkeypatch, "npo_loss")
    model = copy.deepcopy(vanilla)
    unlearn_with("npo", model, processor, adapter, small_world,
                 UnlearnConfig(steps=3, batch_size=4, renderings="text_only", lr=5e-3), progress=False)
    assert len(calls) == 3
    with torch.no_grad():
        for (args, kwargs) in calls:
            forget, reference_nll = args[1], args[2]
            assert torch.allclose(reference_nll, answer_nll(frozen, forget, per_sequence=True), atol=1e-5)


def _texts(processor, batch):
    tokenizer = getattr(processor, "tokenizer", processor)
    return [tokenizer.decode(row[m.bool()], skip_special_tokens=True)
            for row, m in zip(batch["input_ids"], batch["attention_mask"])]


@pytest.mark.parametrize("method", ["graddiff", "kl"])
def test_retain_batches_hold_only_retain_people(small_world, small_vanilla, monkeypatch, method):
    vanilla, processor, adapter = small_vanilla
    frozen = copy.deepcopy(vanilla).eval()
    streams = _recording(monkeypatch, "_batches")
    losses = _recording(monkeypatch, f"{method}_loss")
    model = copy.deepcopy(vanilla)
    config = UnlearnConfig(steps=2, batch_size=4, renderings="text_only", lr=5e-3, retain_weight=0.7)
    report = unlearn_with(method, model, processor, adapter, small_world, config, progress=False)

    retain_items = training_items(small_world.retain_train, ("text_only",))
    forget_items = training_items(small_world.forget_train, ("text_only",))
    (_, _, forget_stream, *_), _ = streams[0]
    (_, _, retain_stream, *_), _ = streams[1]
    key = lambda it: (it.question, it.answer)  # noqa: E731
    assert [key(i) for i in forget_stream] == [key(i) for i in forget_items]
    assert [key(i) for i in retain_stream] == [key(i) for i in retain_items]
    assert report["retain_items"] == len(retain_items)

    # Every retain batch the loss saw holds retain answers only (decoded from its tokens), no forget answer.
    retain_answers = {i.answer for i in retain_items}
    forget_answers = {i.answer for i in forget_items} - retain_answers
    assert len(losses) == 2
    for args, _ in losses:
        for text in _texts(processor, args[2]):
            assert any(a in text for a in retain_answers), text
            assert not any(a in text for a in forget_answers), text

    if method == "graddiff":
        # The first step's loss is −NLL(forget) + w·NLL(retain) of the vanilla model on those very batches.
        args, _ = losses[0]
        with torch.no_grad():
            expected = -answer_nll(frozen, args[1]) + 0.7 * answer_nll(frozen, args[2])
        assert report["losses"][0] == pytest.approx(expected.item(), rel=1e-4)
        assert report["losses"][1] != pytest.approx(report["losses"][0], rel=1e-6)


def test_kl_loss_is_ascent_on_forget_plus_weighted_kl_on_retain(small_vanilla, forget_batch):
    """``kl_loss`` = −NLL(forget) + w · KL(p_ref ‖ p_θ)(retain), each term computed here on its own (a reference
    that differs from the model, so the KL term is not zero and its sign shows)."""
    model, _, _ = small_vanilla
    retain = forget_batch
    with torch.no_grad():
        reference_logits = model(**{k: v for k, v in retain.items() if k != "labels"}).logits + \
            torch.linspace(-2, 2, model.config.text_config.vocab_size)
        nll = answer_nll(model, forget_batch).item()
        kl = answer_kl(model, reference_logits, retain).item()
        loss = baselines.kl_loss(model, forget_batch, retain, reference_logits, retain_weight=0.7).item()
    assert kl > 0.01
    assert loss == pytest.approx(-nll + 0.7 * kl, rel=1e-5)


def test_answer_kl_with_one_answer_token_is_that_tokens_kl():
    ref_logits = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]])
    cur_logits = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long), "labels": torch.tensor([[-100, 0]])}
    p = torch.softmax(ref_logits[0, 0], -1)
    q = torch.softmax(cur_logits[0, 0], -1)
    expected = float((p * (p / q).log()).sum())
    assert answer_kl(_FixedLogits(cur_logits), ref_logits, batch).item() == pytest.approx(expected, rel=1e-5)


def test_lazy_encoding_holds_exactly_its_byte_budget(small_world, small_vanilla):
    """Encodings are counted in bytes (numel × element size); one that fills the budget exactly is kept, and a
    budget one byte smaller keeps nothing (each item is then encoded anew, identically)."""
    _, processor, adapter = small_vanilla
    items = training_items(small_world.forget_train, ("image_text",))[:3]
    sizes = [sum(v.numel() * v.element_size() for v in encode_item(processor, adapter, i).values()
                 if isinstance(v, torch.Tensor)) for i in items]
    exact = baselines._LazyEncoding(processor, adapter, items, max_bytes=sizes[0])
    first = exact[0]
    assert exact.held == sizes[0] and list(exact.cache) == [0] and exact[0] is first
    exact[1]  # does not fit beside item 0: item 0 is dropped first
    assert list(exact.cache) == ([1] if sizes[1] <= sizes[0] else []) and exact.held == sum(
        sizes[i] for i in exact.cache)
    small = baselines._LazyEncoding(processor, adapter, items, max_bytes=sizes[0] - 1)
    again = small[0]
    assert not small.cache and small.held == 0 and small[0] is not again
    assert all(torch.equal(again[k], small[0][k]) for k in again if isinstance(again[k], torch.Tensor))
    roomy = baselines._LazyEncoding(processor, adapter, items, max_bytes=sum(sizes))
    [roomy[i] for i in range(3)]
    assert roomy.held == sum(sizes) and list(roomy.cache) == [0, 1, 2]


def test_no_items_to_unlearn_on_says_so(small_world, small_vanilla):
    model, processor, adapter = small_vanilla
    empty = replace(small_world, forget_train=[])
    with pytest.raises(ValueError, match="^no items to unlearn on: the world has no question/answer pairs in these "
                                         "renderings$"):
        unlearn_with("ga", copy.deepcopy(model), processor, adapter, empty, UnlearnConfig(steps=1), progress=False)


def test_batch_size_one_is_a_batch_and_zero_is_not():
    assert UnlearnConfig(batch_size=1).batch_size == 1
    with pytest.raises(ValueError, match="batch_size=0 must be"):
        UnlearnConfig(batch_size=0)


@pytest.mark.parametrize("method,references", [("ga", 0), ("graddiff", 0), ("kl", 1), ("npo", 1)])
def test_only_kl_and_npo_hold_a_frozen_reference(small_world, small_vanilla, monkeypatch, method, references):
    """A frozen reference is a second copy of the model (full fine-tuning): GA and GradDiff must not build one
    (on a 7B model it is the memory of a second model)."""
    model, processor, adapter = small_vanilla
    built = []
    monkeypatch.setattr(baselines, "FrozenReference",
                        lambda *a, **k: built.append(a) or FrozenReference(*a, **k))
    unlearn_with(method, copy.deepcopy(model), processor, adapter, small_world,
                 UnlearnConfig(steps=1, batch_size=2, renderings="text_only"), progress=False)
    assert len(built) == references


def test_the_progress_bar_names_the_method(small_world, small_vanilla, capsys):
    model, processor, adapter = small_vanilla
    unlearn_with("graddiff", copy.deepcopy(model), processor, adapter, small_world,
                 UnlearnConfig(steps=1, batch_size=2, renderings="text_only"), progress=True)
    assert "unlearn graddiff" in capsys.readouterr().err


def test_a_text_only_step_leaves_the_vision_tower_where_it_was(small_world, small_vanilla):
    """With ``renderings="both"`` some batches hold no image, so the vision tower gets no gradient there. Its
    gradients are dropped (``zero_grad(set_to_none=True)``), so AdamW skips it on those steps; zeroed gradients
    would let AdamW's momentum from the last image batch keep moving it."""
    model, processor, adapter = small_vanilla
    config = UnlearnConfig(steps=8, batch_size=4, renderings="both")
    items = training_items(small_world.forget_train, ("image_text", "text_only"))
    has_image = ["pixel_values" in batch for batch, _ in
                 zip(baselines._batches(processor, adapter, items, config.batch_size, config.seed), range(config.steps))]
    assert any(has_image[:-1]) and not all(has_image[1:])  # the case holds a text-only step after an image step
    tower = [n for n, _ in model.named_parameters() if "vision_tower" in n]
    snapshots = [{n: p.detach().clone() for n, p in model.named_parameters() if n in tower}]
    network = copy.deepcopy(model)

    def snapshot(step, net):
        snapshots.append({n: p.detach().clone() for n, p in net.named_parameters() if n in tower})

    unlearn_with("ga", network, processor, adapter, small_world, config, progress=False, on_step=snapshot)
    moved = [any(not torch.equal(before[n], after[n]) for n in tower) for before, after in zip(snapshots, snapshots[1:])]
    assert moved == has_image, (moved, has_image)
