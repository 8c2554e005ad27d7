"""The released code's emulation (manu_lite.released): projection outputs, layers pooled under three keys, the
last three layers pruned with identical indices, output rows zeroed — each checked against plain torch."""
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from manu_lite.config import ManuConfig
from manu_lite.hooks import find_sites, token_mask_from_batch
from manu_lite.importance import select
from manu_lite.manu import manu_unlearn
from manu_lite.prune import NeuronMask
from manu_lite.released import output_sites, record_outputs, select_released
from manu_lite.stats import collect_stats
from tiny_models import IMAGE_TOKEN, _TEXT, _VISION, _text_batch, assert_state_equal, inputs, snapshot, tiny_idefics2

TAU, EPS = 0.1, 1e-5


def four_layer_llava():
    torch.manual_seed(0)
    config = LlavaConfig(text_config=LlamaConfig(**{**_TEXT, "num_hidden_layers": 4}),
                         vision_config=CLIPVisionConfig(**_VISION), image_token_index=IMAGE_TOKEN,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(config).eval()

    def make_batch(seed, image):
        batch, g = _text_batch(4, 32, seed, 16 if image else 0)
        if image:
            batch["pixel_values"] = torch.randn(4, 3, 32, 32, generator=g)
        return batch
    return model, make_batch


def raw_outputs(model, batches, projections):
    """(tower, proj) → every layer's output rows stacked, by plain forward hooks (language rows by the mask)."""
    rows = {}
    for batch in batches:
        keep = token_mask_from_batch(batch, "all").reshape(-1)
        handles = []
        for tower, proj, module in projections:
            def hook(m, a, out, key=(tower, proj), tower=tower):
                x = out.reshape(-1, out.shape[-1]).double()
                rows.setdefault(key, []).append(x[keep] if tower == "language" else x)
            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(**inputs(batch))
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in rows.items()}


def code_score(f, r):
    """Σ w (F/(R+ε) − 1) with w = 2 (mean|a|), 0 (freq), 2 (unbiased std), 2 (rms), from raw rows."""
    def m(a):
        return [a.abs().mean(0), a.std(0), a.pow(2).mean(0).sqrt()]
    return sum(2 * (x / (y + EPS) - 1) for x, y in zip(m(f), m(r)))


def test_select_released_pools_every_layer_enters_three_keys_and_prunes_the_last_three():
    model, make_batch = four_layer_llava()
    sites = find_sites(model)
    recorded = output_sites(model, sites)
    assert sorted({s.proj for s in recorded if s.tower == "language"}) == ["down_proj", "gate_proj", "up_proj"]
    assert sorted({s.proj for s in recorded if s.tower == "vision"}) == ["fc1", "fc2"]
    batches = {("forget", r): [make_batch(s, r == "image_text") for s in (0, 1)] for r in ("image_text", "text_only")}
    batches |= {("retain", r): [make_batch(s, r == "image_text") for s in (2, 3)] for r in ("image_text", "text_only")}
    stats = {key: collect_stats(model, b, recorded, positions="all", tau=TAU, progress=False,
                                recorder=record_outputs) for key, b in batches.items()}
    config = ManuConfig(formulation="reference", alpha=10, emulate_released_defects=True)
    neurons, channels = select_released(stats, recorded, config)

    # By hand, per tower on its rendering: each projection's rows of all layers pooled, scored, entered 3 times.
    want_neurons, want_channels = {}, {}
    for tower, rendering, layers, projs in (("language", "text_only", range(4), ("gate_proj", "up_proj", "down_proj")),
                                            ("vision", "image_text", range(2), ("fc1", "fc2"))):
        mlps = [model.model.language_model.layers[i].mlp if tower == "language"
                else model.model.vision_tower.encoder.layers[i].mlp for i in layers]
        projections = [(tower, p, getattr(mlp, p)) for mlp in mlps for p in projs]
        f = raw_outputs(model, batches[("forget", rendering)], projections)
        r = raw_outputs(model, batches[("retain", rendering)], projections)
        scores = {p: code_score(f[(tower, p)], r[(tower, p)]) for p in projs}
        last = list(layers)[-3:]
        flat = torch.cat([scores[p].repeat(len(last)) for p in projs])
        k = int(10 / 100 * flat.numel())
        threshold = flat.sort(descending=True).values[k - 1]
        picked = {p: (scores[p] >= threshold).nonzero().squeeze(1) for p in projs}
        out_proj = projs[-1]
        for i in last:
            name = f"{tower}.{i}.{out_proj}"
            want_neurons[name] = torch.unique(torch.cat([picked[p] for p in projs[:-1]])).tolist()
            want_channels[name] = picked[out_proj].tolist()
    assert {n: v.tolist() for n, v in neurons.items()} == want_neurons
    assert {n: v.tolist() for n, v in channels.items()} == want_channels
    # Layer 0 of the language model is never pruned; the three pruned layers carry identical indices.
    assert "language.0.down_proj" not in neurons
    assert len({tuple(neurons[f"language.{i}.down_proj"].tolist()) for i in (1, 2, 3)}) == 1
    # The unused last CLIP layer (vision_feature_layer=-2) is hooked and pruned, as the code does.
    assert "vision.1.fc2" in channels


def test_channels_zero_output_rows_restore_exactly_save_and_match_activation_mode(tmp_path):
    model, make_batch = four_layer_llava()
    batch = make_batch(0, True)
    sites = {s.name: s for s in find_sites(model)}
    with torch.no_grad():
        sites["language.3.down_proj"].out_module.bias = None  # Llama has none; CLIP's fc2 has one
    mask = NeuronMask({"language.3.down_proj": [1, 5]}, channels={"language.3.down_proj": [0, 7],
                                                                  "vision.0.fc2": [2]})
    before = snapshot(model)
    with mask.applied(model), torch.no_grad():
        down, fc2 = sites["language.3.down_proj"].out_module, sites["vision.0.fc2"].out_module
        assert down.weight[[0, 7]].abs().sum() == 0 and down.weight[:, [1, 5]].abs().sum() == 0
        assert fc2.weight[2].abs().sum() == 0 and fc2.bias[2] == 0 and fc2.weight[3].abs().sum() > 0
        logits = model(**inputs(batch)).logits
    assert_state_equal(model, before)
    activation = NeuronMask(mask.indices, mode="activation", channels=mask.channels)
    with activation.applied(model), torch.no_grad():
        torch.testing.assert_close(model(**inputs(batch)).logits, logits)
    assert_state_equal(model, before)
    loaded = NeuronMask.load(mask.save(tmp_path / "m"))
    assert {n: v.tolist() for n, v in loaded.channels.items()} == {n: v.tolist() for n, v in mask.channels.items()}
    assert loaded.indices.keys() == mask.indices.keys() and "2 output channels" not in repr(loaded)
    assert "+ 3 output channels" in repr(loaded)
    with pytest.raises(ValueError, match="out of range: its output has 64 channels"):
        NeuronMask({}, channels={"language.0.down_proj": [64]}).apply(model)


def test_idefics2_vision_hooks_fc1_only():
    model, _ = tiny_idefics2()
    recorded = output_sites(model, find_sites(model))
    assert {s.proj for s in recorded if s.tower == "vision"} == {"fc1"}
    assert {s.proj for s in recorded if s.tower == "language"} == {"gate_proj", "up_proj", "down_proj"}


def test_neuron_statistics_refuse_the_emulation():
    with pytest.raises(ValueError, match="run manu_unlearn"):
        select({}, ManuConfig(formulation="reference", emulate_released_defects=True))


def test_manu_unlearn_emulation_prunes_the_last_three_layers_with_channels(small_world, small_vanilla):
    model, processor, adapter = small_vanilla
    config = ManuConfig(formulation="reference", alpha=10, towers=("language",), emulate_released_defects=True)
    mask, report = manu_unlearn(model, processor, small_world.forget_train, small_world.retain_train, config,
                                adapter=adapter, progress=False)
    layers = sorted(s.layer for s in find_sites(model, ("language",)))
    last = {f"language.{i}.down_proj" for i in layers[-3:]}
    assert set(mask.channels) == last and set(mask.indices) <= last
    assert len(mask) + sum(len(c) for c in mask.channels.values()) > 0
    assert all(key.startswith(("forget", "retain")) for key in report.tokens)
