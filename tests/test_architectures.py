"""Every supported MLLM family on a tiny random-init config of its real ``transformers`` class, end to end:
site discovery in both towers, statistics at recall positions, all three prune modes, greedy ``generate``;
unsupported models fail with a message that says what was found and how to register sites; the Colab path
(4-bit weights, simulated without bitsandbytes) needs and gets activation-mode pruning."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from manu_lite import hooks
from manu_lite.config import PROFILES, ManuConfig
from manu_lite.hooks import find_sites, token_mask_from_batch
from manu_lite.stats import collect_stats
from manu_lite.manu import manu_unlearn
from manu_lite.models import load_mllm
from manu_lite.prune import NeuronMask, uneditable_sites
from tiny_models import direct_stats, stored_activations
from tiny_models import assert_state_equal, inputs, record, snapshot
from tiny_models import ALL_BUILDERS, tiny_llava

# The real class each builder instantiates, the vision tower's MLP layout, and vision tokens per image
# (CLIP keeps its class token: 16 + 1; LLaVA-NeXT runs the base view and two anyres tiles: 3 x 17).
FAMILIES = {
    "llava": ("LlavaForConditionalGeneration", "fc2", 17),
    "llava_next": ("LlavaNextForConditionalGeneration", "fc2", 3 * 17),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "fc2", 16),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "down_proj", 16),
    "idefics2": ("Idefics2ForConditionalGeneration", "fc2", 16),
    "idefics3": ("Idefics3ForConditionalGeneration", "fc2", 16),
    "smolvlm": ("SmolVLMForConditionalGeneration", "fc2", 16),
    "paligemma": ("PaliGemmaForConditionalGeneration", "fc2", 16),
}
IN_PROJS = {"down_proj": ("gate_proj", "up_proj"), "fc2": ("fc1",)}
BATCH = 3


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model, make_batch = ALL_BUILDERS[request.param](seed=0)
    cls, vision_out, patches = FAMILIES[request.param]
    return SimpleNamespace(name=request.param, model=model, cls=cls, vision_out=vision_out, patches=patches,
                           image=make_batch(BATCH, seed=1), text=make_batch(BATCH, seed=2, image=False))


def test_every_family_is_covered():
    assert set(FAMILIES) == set(ALL_BUILDERS)


def test_sites_in_both_towers(family):
    assert type(family.model).__name__ == family.cls  # the real class, not a look-alike
    sites = find_sites(family.model)
    out = family.vision_out
    assert [s.name for s in sites] == ["language.0.down_proj", "language.1.down_proj", f"vision.0.{out}",
                                       f"vision.1.{out}"]
    assert [s.width for s in sites] == [256, 256, 64, 64]
    for site in sites:
        assert site.name == f"{site.tower}.{site.layer}.{site.out_proj}"
        assert site.in_projs == IN_PROJS[site.out_proj]
        assert f".{site.layer}." in f"{site.path}."  # the layer index comes from the module path
        in_vision = any(hooks._VISION_PART.search(part) for part in site.path.split("."))
        assert in_vision == (site.tower == "vision"), site.path
        assert not hooks._BRIDGE_PART.search(site.path), site.path


def test_statistics_at_recall_positions(family):
    model, sites = family.model, find_sites(family.model)
    streamed = collect_stats(model, [family.image], sites, positions="recall", tau=0.5, progress=False)
    stored = stored_activations(model, [family.image], sites, "recall")
    recall = int(token_mask_from_batch(family.image, "recall").sum())
    assert recall == BATCH * 4  # 4 answer tokens per row
    for site in sites:
        got, want = streamed[site.name], direct_stats(stored[site.name], 0.5)
        assert got.count.item() == want["count"] == (recall if site.tower == "language" else BATCH * family.patches)
        assert torch.equal(got.count_above, want["count_above"])
        assert torch.allclose(got.sum_sq, want["sum_sq"], rtol=1e-5, atol=1e-6)
        assert got.sum_abs.sum() > 0
    text = collect_stats(model, [family.text], sites, positions="recall", progress=False)
    assert text["language.0.down_proj"].count.item() == BATCH * 4
    assert text[f"vision.0.{family.vision_out}"].count.item() == 0  # no image: the vision tower never ran


def test_prune_modes(family):
    model, batch = family.model, family.image
    sites = find_sites(model)
    g = torch.Generator().manual_seed(0)
    indices = {s.name: torch.randperm(s.width, generator=g)[: s.width // 4].sort().values for s in sites}
    state = snapshot(model)
    before, logits = record(model, batch, sites)
    first_vision = f"vision.0.{family.vision_out}"

    with NeuronMask.from_sites(indices, sites, mode="neuron").applied(model):
        for site in sites:  # the neuron's column of the output projection and rows of the input projections
            idx = indices[site.name]
            assert torch.all(site.out_module.weight[:, idx] == 0)
            for module in site.in_modules:
                assert torch.all(module.weight[idx] == 0)
                assert module.bias is None or torch.all(module.bias[idx] == 0)
        pruned, logits_neuron = record(model, batch, sites)
    assert_state_equal(model, state)
    kept = torch.ones(64, dtype=torch.bool)
    kept[indices[first_vision]] = False
    # Nothing upstream of the first vision MLP changed: its kept neurons are bit-identical.
    assert torch.equal(pruned[first_vision][..., kept], before[first_vision][..., kept])
    for site in sites:
        assert torch.all(pruned[site.name][..., indices[site.name]] == 0), site.name
        assert before[site.name][..., indices[site.name]].abs().sum() > 0
    assert not torch.allclose(logits_neuron, logits, atol=1e-4)

    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        assert_state_equal(model, state)  # weights untouched
        masked, logits_activation = record(model, batch, sites)
    assert torch.allclose(logits_activation, logits_neuron, atol=1e-5, rtol=1e-5)
    assert all(torch.all(masked[n][..., idx] == 0) for n, idx in indices.items())

    outputs = {}
    handles = [s.out_module.register_forward_hook(lambda m, a, o, n=s.name: outputs.setdefault(n, o.detach()))
               for s in sites]
    try:
        with NeuronMask.from_sites({s.name: [0, 3] for s in sites}, sites, mode="output_rows").applied(model):
            with torch.no_grad():
                model(**inputs(batch))
    finally:
        for handle in handles:
            handle.remove()
    for name, out in outputs.items():
        assert torch.all(out[..., [0, 3]] == 0) and out[..., 1].abs().sum() > 0, name
    assert_state_equal(model, state)  # every mode restores bit-exactly
    _, logits_after = record(model, batch, sites)
    assert torch.equal(logits_after, logits)


def left_padded(batch):
    """The batch with each row's padding moved to the left (what ``generate`` expects)."""
    lengths = batch["attention_mask"].sum(1)
    width = batch["input_ids"].shape[1]
    out = dict(batch)
    for key, value in batch.items():
        if key != "labels" and value.dim() == 2 and value.shape[1] == width:
            out[key] = torch.stack([row.roll(int(width - n)) for row, n in zip(value, lengths)])
    return out


def test_generate_greedy_under_masks(family):
    model, sites = family.model, find_sites(family.model)
    batch = inputs(left_padded(family.image))
    width = batch["input_ids"].shape[1]

    def greedy():
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=2, do_sample=False, return_dict_in_generate=True,
                                 output_logits=True, pad_token_id=0)
        return out.sequences[:, width:], out.logits[0]

    tokens, first_logits = greedy()
    assert tokens.shape == (BATCH, 2)
    # Row 0 has no padding: generate's first step is the plain forward's last position.
    with torch.no_grad():
        last = model(**first_row(family.image)).logits[0, -1]
    assert torch.allclose(first_logits[0], last, atol=1e-4)
    assert tokens[0, 0] == last.argmax()
    indices = {s.name: torch.arange(0, s.width, 3) for s in sites}
    with NeuronMask.from_sites(indices, sites, mode="neuron").applied(model):
        pruned_tokens, pruned_logits = greedy()
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        masked_tokens, masked_logits = greedy()  # the hooks also act during cached decoding
    assert torch.equal(pruned_tokens, masked_tokens)
    assert torch.allclose(pruned_logits, masked_logits, atol=1e-4)
    assert not torch.allclose(pruned_logits, first_logits, atol=1e-4)
    assert torch.equal(greedy()[0], tokens)  # restored


def first_row(batch):
    """Model inputs of the first row alone (Qwen-VL flattens image patches over the batch: take row 0's)."""
    out = {k: v[:1] for k, v in batch.items() if k not in ("labels", "pixel_values")}
    if "pixel_values" in batch:
        grid = batch.get("image_grid_thw")
        out["pixel_values"] = batch["pixel_values"][: int(grid[0].prod()) if grid is not None else 1]
    return out


# ---- models we do not recognise ----------------------------------------------------------------------------
class SwiGLU(nn.Module):
    """A Mixtral-style expert MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden=16, width=32):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(hidden, width), nn.Linear(hidden, width), nn.Linear(width, hidden)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class TinyLM(nn.Module):
    """Embedding, two residual ``feed_forward`` blocks, a head: input_ids ``[B, T]`` → logits ``[B, T, 50]``."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.layers = nn.ModuleList([nn.ModuleDict({"feed_forward": SwiGLU()}) for _ in range(2)])
        self.head = nn.Linear(16, 50)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + layer["feed_forward"](x)
        return SimpleNamespace(logits=self.head(x))


def test_unsupported_models_explain_and_can_be_registered(monkeypatch):
    with pytest.raises(ValueError) as plain:
        find_sites(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)))
    assert "(root) (Sequential): children 0 (Linear 4->8), 1 (ReLU), 2 (Linear 8->4)" in str(plain.value)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(ValueError, match=r"(?s)transformer\.h\.1\.mlp \(GPT2MLP\): children c_fc \(Conv1D\).*"
                                         r"not a known layout.*register_mlp_layout.*NeuronSite\("):
        find_sites(gpt2)
    model = TinyLM()
    with pytest.raises(ValueError) as err:
        find_sites(model)
    message = str(err.value)
    for part in ("layers.0.feed_forward (SwiGLU): children w1 (Linear 16->32), w3 (Linear 16->32), w2 (Linear "
                 "32->16); not a known layout (gate_proj/up_proj -> down_proj or fc1 -> fc2)",
                 "register_mlp_layout(in_projs=", "sites=[NeuronSite(", "<the module at layers.0.feed_forward>"):
        assert part in message
    monkeypatch.setattr(hooks, "MLP_LAYOUTS", hooks.MLP_LAYOUTS)  # restored after the test
    hooks.register_mlp_layout(("w1", "w3"), "w2")
    hooks.register_mlp_layout(("w1", "w3"), "w2")  # idempotent
    assert hooks.MLP_LAYOUTS.count((("w1", "w3"), "w2")) == 1
    sites = find_sites(model)
    assert [(s.name, s.width) for s in sites] == [("language.0.w2", 32), ("language.1.w2", 32)]
    batch = {"input_ids": torch.randint(0, 50, (2, 6)), "labels": torch.full((2, 6), -100)}
    batch["labels"][:, -2:] = 1
    assert collect_stats(model, [batch], progress=False)["language.1.w2"].count.item() == 2 * 2
    state = snapshot(model)
    with NeuronMask.from_sites({"language.0.w2": [1, 5]}, sites).applied(model):
        assert torch.all(model.layers[0]["feed_forward"].w1.weight[[1, 5]] == 0)
    assert_state_equal(model, state)
    # Registered projections must be linear layers: GPT-2's Conv1D is named as the reason.
    hooks.register_mlp_layout(("c_fc",), "c_proj")
    with pytest.raises(ValueError, match="has c_fc/c_proj but they are not nn.Linear"):
        find_sites(gpt2)
    with pytest.raises(ValueError, match="layout"):
        hooks.register_mlp_layout((), "w2")


# ---- the Colab path: 4-bit weights -------------------------------------------------------------------------
class Params4bit(nn.Parameter):
    """Stands in for bitsandbytes' ``Params4bit``: packed ``uint8`` data ``[out * in / 2, 1]`` and a
    ``quant_state`` (here simply the dense weight ``[out, in]``, so that the fake layer computes exactly)."""

    def __new__(cls, dense: torch.Tensor):
        packed = torch.zeros(dense.numel() // 2, 1, dtype=torch.uint8)
        param = super().__new__(cls, packed, requires_grad=False)
        param.quant_state = dense.detach().clone()
        return param


class Linear4bit(nn.Linear):
    """Stands in for ``bitsandbytes.nn.Linear4bit``: an ``nn.Linear`` subclass that dequantizes in forward."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight.quant_state.to(x.dtype), self.bias)


def quantize_sites_(model) -> None:
    """Swap every projection of every MLP site for the fake 4-bit layer, in place (as bitsandbytes does)."""
    for site in find_sites(model):
        for module in (site.out_module, *site.in_modules):
            module.__class__ = Linear4bit
            module.weight = Params4bit(module.weight)


def test_four_bit_weights_need_and_get_activation_mode():
    model, make_batch = tiny_llava(seed=0)
    batch = make_batch(3, 28, seed=1)
    sites = find_sites(model)
    indices = {s.name: torch.arange(1, s.width, 5) for s in sites}
    with NeuronMask.from_sites(indices, sites, mode="neuron").applied(model):
        _, want = record(model, batch, sites)
    _, plain = record(model, batch, sites)
    quantize_sites_(model)
    sites = find_sites(model)  # found by layout: Linear4bit keeps in_features/out_features
    assert [s.width for s in sites] == [256, 256, 64, 64]
    problems = uneditable_sites(sites)
    assert set(problems) == set(indices) and "Params4bit" in problems["vision.0.fc2"]
    state = snapshot(model)
    for mode in ("neuron", "output_rows"):
        with pytest.raises(ValueError, match=r"quantized or packed \(Params4bit.*use mode='activation'"):
            NeuronMask.from_sites({n: [0] for n in indices}, sites, mode=mode).apply(model)
    assert_state_equal(model, state)
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        _, got = record(model, batch, sites)
    assert torch.allclose(got, want, atol=1e-5)  # the hook prunes exactly what zeroing weights would
    assert torch.equal(record(model, batch, sites)[1], plain)
    # manu_unlearn refuses a weight mode before it spends any time on statistics (the records are never read).
    with pytest.raises(ValueError, match=r"(?s)cannot be edited in place.*ManuConfig\(prune_mode='activation'\)"):
        manu_unlearn(model, None, [object()], [object()], ManuConfig(prune_mode="neuron"))


def test_colab_profile_loads_in_4bit_or_says_what_is_missing(monkeypatch):
    import importlib.util

    assert PROFILES["colab"].load_in_4bit and PROFILES["colab"].model == "MLLMMU/LLaVA_Vanilla"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    # Raised before any download is attempted (offline, a hub name would otherwise end in an OSError).
    with pytest.raises(RuntimeError, match=r"(?s)bitsandbytes package.*and a CUDA GPU.*prune_mode='activation'"):
        load_mllm(PROFILES["colab"].model, load_in_4bit=True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU \(Colab"):
        load_mllm(PROFILES["colab"].model, load_in_4bit=True)
