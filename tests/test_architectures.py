"""Every supported MLLM family on a tiny random-init config of its real ``transformers`` class, end to end:
site discovery in both towers, statistics at recall positions, all three prune modes, greedy ``generate``;
unsupported models fail with a message that says what was found and how to register sites; the Colab path
(4-bit weights, simulated without bitsandbytes) needs and gets activation-mode pruning."""
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from manu_lite import hooks
from manu_lite import sites as site_module
from manu_lite.config import PROFILES, ManuConfig
from manu_lite.hooks import find_sites, token_mask_from_batch
from manu_lite.stats import collect_stats
from manu_lite.manu import manu_unlearn
from manu_lite.models import load_mllm
from manu_lite.prune import NeuronMask, uneditable_sites
from tiny_models import direct_stats, stored_activations
from tiny_models import assert_state_equal, inputs, record, snapshot
from tiny_models import ALL_BUILDERS, IMAGE_TOKEN, PAD, VOCAB, _text_batch, tiny_llava

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
        in_vision = any(site_module._VISION_PART.search(part) for part in site.path.split("."))
        assert in_vision == (site.tower == "vision"), site.path
        assert not site_module._BRIDGE_PART.search(site.path), site.path


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


def test_prompt_continuations_equal_full_forward_passes(family):
    """Likelihood MC scores the options of a question by continuing one pass over the prompt, on the model types
    of SHARED_PROMPT_MODELS; there every answer's log-probability equals that of a full forward pass over prompt +
    answer, with and without an image and with answers of different lengths (padded, masked)."""
    from manu_lite.likelihood import SHARED_PROMPT_MODELS, prompt_continuations
    from manu_lite.models import answer_nll

    if family.model.config.model_type not in SHARED_PROMPT_MODELS:
        pytest.skip(f"{family.name} is scored by full forward passes (not in SHARED_PROMPT_MODELS)")
    answers = [[5, 7, 9], [11], [13, 17, 19, 23], [29, 31]]
    for batch in (family.image, family.text):
        prompt = first_row(batch)
        width = prompt["input_ids"].shape[1]
        full = []
        for answer in answers:
            tail = torch.tensor([answer])
            joined = {k: torch.cat([v, tail if k == "input_ids" else torch.ones_like(tail) if k == "attention_mask"
                                    else torch.zeros_like(tail)], 1) if v.dim() == 2 and v.shape[1] == width else v
                      for k, v in prompt.items()}
            joined["labels"] = torch.cat([torch.full((1, width), -100), tail], 1)
            with torch.no_grad():
                full.append(-float(answer_nll(family.model, joined, per_sequence=True)[0]))
        with torch.no_grad():
            shared = prompt_continuations(family.model, prompt, answers).tolist()
        assert shared == pytest.approx(full, abs=1e-4), family.name
        assert len(set(shared)) == len(answers)  # the answers were told apart


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
                 "32->16); not a known layout (gate_proj/up_proj -> down_proj or gate_up_proj -> down_proj or "
                 "fc1 -> fc2 or linear_fc1 -> linear_fc2)",
                 # the suggested call is read off the shapes: w1, w3 write 32 = what w2 reads
                 "register_mlp_layout(in_projs=('w1', 'w3'), out_proj='w2')",
                 "sites=[NeuronSite(", "<the module at layers.0.feed_forward>"):
        assert part in message
    monkeypatch.setattr(site_module, "MLP_LAYOUTS", site_module.MLP_LAYOUTS)  # restored after the test
    hooks.register_mlp_layout(("w1", "w3"), "w2")
    hooks.register_mlp_layout(("w1", "w3"), "w2")  # idempotent
    assert site_module.MLP_LAYOUTS.count((("w1", "w3"), "w2")) == 1
    # A text-only model has no vision tower: asking for both towers (the default) says so, not silently.
    with pytest.raises(ValueError, match=r"(?s)the vision tower of TinyLM has no MLP neuron site.*no module path "
                                         r"has a vision/visual/image/img component.*pass towers=\('language',\)"):
        find_sites(model)
    sites = find_sites(model, ("language",))
    assert [(s.name, s.width) for s in sites] == [("language.0.w2", 32), ("language.1.w2", 32)]
    batch = {"input_ids": torch.randint(0, 50, (2, 6)), "labels": torch.full((2, 6), -100)}
    batch["labels"][:, -2:] = 1
    assert collect_stats(model, [batch], sites, progress=False)["language.1.w2"].count.item() == 2 * 2
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


# ---- newer layouts: Qwen3-VL, Phi-4-multimodal, Llama-4, Qwen3-VL-MoE ------------------------------------------
# Before: Qwen3-VL's vision MLP (linear_fc1/linear_fc2) was not found, so find_sites returned the language tower
# alone; Phi-4-multimodal's vision encoder (under embed_tokens_extend.image_embed) was labelled language and its
# fused gate_up_proj language MLPs were not found; Llama-4's routed experts were dropped without a word.
def tiny_qwen3_vl(seed=0):
    """Qwen3-VL: Qwen3 text (hidden 64, MLP 256) + vision blocks whose MLP is linear_fc1/linear_fc2 (width 64);
    the merger and the deepstack mergers (also linear_fc1/linear_fc2) are the bridge."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from tiny_models import _QWEN_TEXT, _QWEN_TOKENS, _qwen_make_batch

    torch.manual_seed(seed)
    config = Qwen3VLConfig(text_config=dict(_QWEN_TEXT, head_dim=16),
                           vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                              out_hidden_size=64, patch_size=4, spatial_merge_size=2,
                                              temporal_patch_size=2, deepstack_visual_indexes=[0]),
                           **_QWEN_TOKENS)
    return Qwen3VLForConditionalGeneration(config).eval(), _qwen_make_batch()


def _phi4_config(**text):
    from transformers import Phi4MultimodalConfig

    # feature_layer=-1: with two vision layers the default (-2) would leave the last one unused.
    return Phi4MultimodalConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=PAD, **text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, crop_size=32, patch_size=4, image_token_id=IMAGE_TOKEN, feature_layer=-1),
        audio_config=dict(hidden_size=32, intermediate_size=40, num_blocks=2, num_attention_heads=2,
                          ext_pw_out_channel=32, depthwise_separable_out_channel=32, nemo_conv_channels=32,
                          input_size=16, audio_token_id=121))


def tiny_phi4_multimodal(seed=0):
    """Phi-4-multimodal: Phi-3-style text with a fused gate_up_proj MLP (width 256: gate_up_proj writes 512), a
    SigLIP vision encoder under embed_tokens_extend.image_embed.img_processor (fc1/fc2, width 64), an audio
    encoder with fused MLPs too (not a MANU tower). One image = a global crop and one 32 px sub-crop: 8x8 patches
    pooled to 4x4, 4 x (4 + 1) tokens per crop plus a separator = 41 image tokens."""
    from transformers import Phi4MultimodalForCausalLM

    torch.manual_seed(seed)
    model = Phi4MultimodalForCausalLM(_phi4_config()).eval()

    def make_batch(batch_size=3, seq_len=56, seed=0, image=True):
        batch, g = _text_batch(batch_size, seq_len, seed, 41 if image else 0)
        if image:
            batch["image_pixel_values"] = torch.randn(batch_size, 2, 3, 32, 32, generator=g)
            batch["image_sizes"] = torch.tensor([[32, 32]] * batch_size)
            batch["image_attention_mask"] = torch.ones(batch_size, 2, 8, 8)
        return batch

    return model, make_batch


def tiny_llama4(seed=0):
    """Llama-4: layer 0 a dense MLP (width 256), layer 1 a mixture of experts — 3 routed experts with fused
    parameters (Llama4TextExperts) and a shared expert (width 128); vision encoder with fc1/fc2 MLPs (width 128),
    its pixel-shuffle adapter (fc1/fc2) is the bridge. 16 px, patch 4, shuffle 0.5: 4 image tokens."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    torch.manual_seed(seed)
    config = Llama4Config(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, intermediate_size_mlp=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                         num_local_experts=3, num_experts_per_tok=1, interleave_moe_layer_step=2, pad_token_id=PAD,
                         attention_chunk_size=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           vision_output_dim=32, image_size=16, patch_size=4, projector_input_dim=32,
                           projector_output_dim=32),
        image_token_index=IMAGE_TOKEN)
    model = Llama4ForConditionalGeneration(config).eval()

    def make_batch(batch_size=3, seq_len=32, seed=0, image=True):
        batch, g = _text_batch(batch_size, seq_len, seed, 4 if image else 0)
        if image:
            batch["pixel_values"] = torch.randn(batch_size, 3, 16, 16, generator=g)
        return batch

    return model, make_batch


def logits_of(model, batch):
    """The model's logits; for Llama-4 read off its language model (transformers 5.x's
    Llama4ForConditionalGeneration.forward asks its language model's output for ``image_outputs``, which it lacks)."""
    got = {}
    handle = (model.language_model.register_forward_hook(lambda m, a, out: got.update(logits=out.logits))
              if type(model).__name__ == "Llama4ForConditionalGeneration" else None)
    try:
        with torch.no_grad():
            try:
                return model(**inputs(batch)).logits
            except AttributeError as exc:
                if handle is None or "image_outputs" not in str(exc):
                    raise
                return got["logits"]
    finally:
        if handle is not None:
            handle.remove()


def record_new(model, batch, sites):
    out = {}
    with hooks.record_neurons(model, sites, lambda s, a: out.__setitem__(s.name, a.detach().clone())):
        logits = logits_of(model, batch)
    return out, logits


# family -> (builder, real class, site name -> (width, fused), routed-expert modules find_sites warns about)
NEW_FAMILIES = {
    "qwen3_vl": (tiny_qwen3_vl, "Qwen3VLForConditionalGeneration",
                 {"language.0.down_proj": (256, 1), "language.1.down_proj": (256, 1),
                  "vision.0.linear_fc2": (64, 1), "vision.1.linear_fc2": (64, 1)}, 0),
    "phi4_multimodal": (tiny_phi4_multimodal, "Phi4MultimodalForCausalLM",
                        {"language.0.down_proj": (256, 2), "language.1.down_proj": (256, 2),
                         "vision.0.fc2": (64, 1), "vision.1.fc2": (64, 1)}, 0),
    "llama4": (tiny_llama4, "Llama4ForConditionalGeneration",
               {"language.0.down_proj": (256, 1), "language.1.down_proj": (128, 1),
                "vision.0.fc2": (128, 1), "vision.1.fc2": (128, 1)}, 1),
}


def sites_quietly(model, expected_warnings=0, **kwargs):
    """find_sites, checking how many SiteWarnings it gives (routed experts)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sites = find_sites(model, **kwargs)
    site_warnings = [w for w in caught if issubclass(w.category, hooks.SiteWarning)]
    assert len(site_warnings) == expected_warnings, [str(w.message) for w in site_warnings]
    return sites


@pytest.fixture(scope="module", params=sorted(NEW_FAMILIES))
def new_family(request):
    build, cls, expected, n_warnings = NEW_FAMILIES[request.param]
    model, make_batch = build(seed=0)
    return SimpleNamespace(name=request.param, model=model, cls=cls, expected=expected, warnings=n_warnings,
                           batch=make_batch(3, seed=1))


def _act(mlp):
    return next(getattr(mlp, a) for a in ("act_fn", "activation_fn") if hasattr(mlp, a))


def test_new_layouts_both_towers_and_the_recorded_activation(new_family):
    model = new_family.model
    assert type(model).__name__ == new_family.cls
    sites = sites_quietly(model, new_family.warnings)
    assert {s.name: (s.width, s.fused) for s in sites} == new_family.expected
    for site in sites:
        in_vision = any(site_module._VISION_PART.search(part) for part in site.path.split("."))
        assert in_vision == (site.tower == "vision"), site.path  # Phi-4's image_embed... is vision
        assert not site_module._BRIDGE_PART.search(site.path) and "audio" not in site.path, site.path
    # The recorded activation is the input of the output projection = act(gate) * up (fused: the chunks of
    # gate_up_proj), act(fc1 x) for fc1/fc2 MLPs; computed here from the input projections' outputs.
    produced = {}
    handles = [m.register_forward_hook(lambda mod, a, out, key=(s.name, p): produced.update({key: out.detach()}))
               for s in sites for p, m in zip(s.in_projs, s.in_modules)]
    try:
        acts, _ = record_new(model, new_family.batch, sites)
    finally:
        for handle in handles:
            handle.remove()
    for site in sites:
        act, got = _act(site.mlp), acts[site.name]
        assert got.shape[-1] == site.width and got.abs().sum() > 0, site.name  # both towers ran
        ins = [produced[(site.name, p)] for p in site.in_projs]
        if site.fused == 2:
            first, second = ins[0].chunk(2, dim=-1)  # Phi4MultimodalMLP: gate, up = ...chunk(2)
            want = second * act(first)
        elif len(ins) == 2:
            want = act(ins[0]) * ins[1]
        else:
            want = act(ins[0])
        assert torch.allclose(got, want.reshape(got.shape), atol=1e-6, rtol=1e-5), site.name


@pytest.mark.filterwarnings("ignore::manu_lite.hooks.SiteWarning")  # Llama-4's experts: counted in sites_quietly
def test_new_layouts_prune_exactly_and_restore_bit_exactly(new_family):
    model, batch = new_family.model, new_family.batch
    sites = sites_quietly(model, new_family.warnings)
    g = torch.Generator().manual_seed(0)
    indices = {s.name: torch.randperm(s.width, generator=g)[: s.width // 4].sort().values for s in sites}
    state = snapshot(model)
    before, logits = record_new(model, batch, sites)
    with NeuronMask.from_sites(indices, sites, mode="neuron").applied(model):
        changed = sum(int((v != state[k]).sum()) for k, v in model.state_dict().items())
        expected = 0
        for site in sites:
            idx = indices[site.name]
            rows = torch.cat([idx + block * site.width for block in range(site.fused)])
            assert torch.all(site.out_module.weight[:, idx] == 0)
            expected += int((state_of(state, site.out_module, model)[:, idx] != 0).sum())
            for module in site.in_modules:
                assert module.weight.shape[0] == site.fused * site.width
                assert torch.all(module.weight[rows] == 0)  # a fused gate_up_proj: the gate AND the up rows
                assert module.bias is None or torch.all(module.bias[rows] == 0)
                keep = torch.ones(module.weight.shape[0], dtype=torch.bool)
                keep[rows] = False
                assert torch.equal(module.weight[keep], state_of(state, module, model)[keep])
                expected += int((state_of(state, module, model)[rows] != 0).sum())
                if module.bias is not None:
                    expected += int((state_of(state, module, model, "bias")[rows] != 0).sum())
        assert changed == expected  # exactly those rows and columns, nothing else
        pruned, logits_neuron = record_new(model, batch, sites)
    assert_state_equal(model, state)
    for site in sites:
        assert torch.all(pruned[site.name][..., indices[site.name]] == 0), site.name
        assert before[site.name][..., indices[site.name]].abs().sum() > 0, site.name
    assert not torch.allclose(logits_neuron, logits, atol=1e-4)
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        masked, logits_activation = record_new(model, batch, sites)
    assert torch.allclose(logits_activation, logits_neuron, atol=1e-5, rtol=1e-5)
    assert_state_equal(model, state)
    assert torch.equal(logits_of(model, batch), logits)  # restored bit-exactly


def state_of(state, module, model, tensor="weight"):
    """The snapshot entry of ``module``'s weight (or bias)."""
    name = next(n for n, m in model.named_modules() if m is module)
    return state[f"{name}.{tensor}"]


def test_qwen3_vl_vision_tower_is_never_lost_in_silence(monkeypatch):
    model, _ = tiny_qwen3_vl()
    monkeypatch.setattr(site_module, "MLP_LAYOUTS", site_module.MLP_LAYOUTS[:1] + site_module.MLP_LAYOUTS[2:3])  # the old layouts
    with pytest.raises(ValueError) as err:
        find_sites(model)
    message = str(err.value)
    for part in ("the vision tower of Qwen3VLForConditionalGeneration has no MLP neuron site, so MANU would score "
                 "and prune the language tower only",
                 "model.visual.blocks.0.mlp (Qwen3VLVisionMLP): children linear_fc1 (Linear 32->64), linear_fc2 "
                 "(Linear 64->32), act_fn (GELUTanh); not a known layout",
                 "register_mlp_layout(in_projs=('linear_fc1',), out_proj='linear_fc2')", "strict=False"):
        assert part in message, part
    assert "merger" not in message  # the merger is the bridge, not the unseen tower
    with pytest.warns(hooks.SiteWarning, match="the vision tower of Qwen3VL"):
        sites = find_sites(model, strict=False)
    assert [s.name for s in sites] == ["language.0.down_proj", "language.1.down_proj"]
    assert len(sites_quietly(model, towers=("language",))) == 2  # the vision tower was not asked for
    hooks.register_mlp_layout(("linear_fc1",), "linear_fc2")
    assert len(sites_quietly(model)) == 4


def test_phi4_multimodal_towers_audio_and_fused_layout(monkeypatch):
    model, _ = tiny_phi4_multimodal()
    table = {row["path"]: row for row in hooks.site_table(model)}
    vision = "model.embed_tokens_extend.image_embed.img_processor"
    assert table[f"{vision}.encoder.layers.1.mlp"]["site"] == "vision.1.fc2"
    assert table["model.layers.0.mlp"]["layout"] == "gate_up_proj -> down_proj (fused x2)"
    assert table[f"{vision}.head.mlp"]["status"] == "excluded"  # the pooling head is no layer
    assert "outside a numbered layer list" in table[f"{vision}.head.mlp"]["reason"]
    audio = [row for path, row in table.items() if "audio_embed" in path and row["layout"]]  # its fused MLPs
    assert len(audio) == 4 and all(r["status"] == "excluded" and "audio" in r["reason"] for r in audio)
    assert hooks.unused_sites(model) == {}  # feature_layer=-1: both vision layers feed the language model
    # Phi-4-multimodal's default feature_layer=-2 reads hidden_states[-2]: the last vision layer is unused.
    from transformers import Phi4MultimodalForCausalLM

    default = _phi4_config()
    default.vision_config.feature_layer = -2
    unused = hooks.unused_sites(Phi4MultimodalForCausalLM(default))
    assert list(unused) == ["vision.1.fc2"] and "feature_layer=-2" in unused["vision.1.fc2"]
    # Without the fused layout the language tower would be lost: raised, with the call that fixes it.
    monkeypatch.setattr(site_module, "MLP_LAYOUTS", tuple(x for x in site_module.MLP_LAYOUTS if x[0] != ("gate_up_proj",)))
    with pytest.raises(ValueError, match=r"(?s)the language tower of Phi4MultimodalForCausalLM has no MLP neuron "
                                         r"site.*model\.layers\.0\.mlp \(Phi4MultimodalMLP\): children gate_up_proj "
                                         r"\(Linear 64->512\), down_proj \(Linear 256->64\).*register_mlp_layout\("
                                         r"in_projs=\('gate_up_proj',\), out_proj='down_proj'\)"):
        find_sites(model)


def test_llama4_routed_experts_are_excluded_loudly():
    model, _ = tiny_llama4()
    with pytest.warns(hooks.SiteWarning, match=r"(?s)1 routed-expert module\(s\) of Llama4ForConditionalGeneration "
                                               r"are NOT scored or pruned by MANU.*layers\.1\.feed_forward\.experts "
                                               r"\(Llama4TextExperts\).*3 experts.*site_table"):
        sites = find_sites(model)
    layers = "language_model.model.layers"
    assert [s.path for s in sites if s.tower == "language"] == [f"{layers}.0.feed_forward",
                                                               f"{layers}.1.feed_forward.shared_expert"]
    table = {row["path"]: row for row in hooks.site_table(model)}
    experts = table["language_model.model.layers.1.feed_forward.experts"]
    assert (experts["status"], experts["tower"], experts["layer"], experts["site"]) == ("experts", "language", 1, None)
    assert "NOT scored" in experts["reason"] and "gate_up_proj (3, 64, 256)" in experts["reason"]
    assert table["vision_model.vision_adapter.mlp"]["status"] == "excluded"  # the pixel-shuffle bridge
    assert "language_model.model.layers.1.feed_forward" not in table  # the MoE block itself explains nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not asked for the language tower: nothing to warn about
        assert [s.name for s in find_sites(model, ("vision",))] == ["vision.0.fc2", "vision.1.fc2"]


def test_moe_layer_of_routed_experts_only_is_not_skipped_in_silence():
    """Qwen3-VL-MoE: layer 0 dense (mlp_only_layers), layer 1 routed experts only, no shared expert."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    from tiny_models import _QWEN_TEXT, _QWEN_TOKENS

    config = Qwen3VLMoeConfig(
        text_config=dict(_QWEN_TEXT, head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                         decoder_sparse_step=1, mlp_only_layers=[0]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[0]),
        **_QWEN_TOKENS)
    model = Qwen3VLMoeForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match=r"(?s)language layer\(s\) \[1\] of model\.language_model\.layers \(2 layers\) "
                                         r"have no MLP neuron site.*layers\.1\.mlp\.experts \(Qwen3VLMoeTextExperts\): "
                                         r"routed experts.*manu_lite does not score routed experts.*strict=False"):
        find_sites(model)
    with pytest.warns(hooks.SiteWarning) as caught:
        sites = find_sites(model, strict=False)
    assert any("layer(s) [1]" in str(w.message) for w in caught)
    assert any("routed-expert module(s)" in str(w.message) for w in caught)
    assert [s.name for s in sites] == ["language.0.down_proj", "vision.0.linear_fc2", "vision.1.linear_fc2"]


def test_a_layer_without_a_known_mlp_is_an_error_or_a_warning():
    model, _ = tiny_llava(seed=0)
    model.model.language_model.layers[1].mlp = SwiGLU(hidden=64, width=256)
    with pytest.raises(ValueError) as err:
        find_sites(model)
    message = str(err.value)
    for part in ("language layer(s) [1] of model.language_model.layers (2 layers) have no MLP neuron site, so MANU "
                 "would skip them without a word",
                 "model.language_model.layers.1.mlp (SwiGLU): children w1 (Linear 64->256), w3 (Linear 64->256), "
                 "w2 (Linear 256->64); not a known layout",
                 "register_mlp_layout(in_projs=('w1', 'w3'), out_proj='w2')", "strict=False"):
        assert part in message, part
    with pytest.warns(hooks.SiteWarning, match=r"layer\(s\) \[1\].*"):
        sites = find_sites(model, strict=False)
    assert [s.name for s in sites] == ["language.0.down_proj", "vision.0.fc2", "vision.1.fc2"]
    assert {r["path"]: r["status"] for r in hooks.site_table(model)}["model.language_model.layers.1.mlp"] == \
        "unrecognized"


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
    import importlib.metadata
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
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.48.2")  # before bitsandbytes' CPU kernels
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU \(Colab"):
        load_mllm(PROFILES["colab"].model, load_in_4bit=True)
