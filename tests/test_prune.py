"""NeuronMask: exact zeros, untouched neighbours, bit-exact restore, activation mode, save/load, fit checks."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manu_lite.hooks import find_sites
from manu_lite.prune import NeuronMask
from tiny_models import assert_state_equal, inputs, record, snapshot, tiny_llava


@pytest.fixture(scope="module")
def llava():
    model, make_batch = tiny_llava(seed=0)
    return model, make_batch, make_batch(3, 28, seed=1)


@pytest.mark.parametrize("site_name", ["language.0.down_proj", "vision.0.fc2"])
def test_pruned_neurons_are_zero_and_others_bit_identical(llava, site_name):
    model, _, batch = llava
    sites = find_sites(model)
    before, _ = record(model, batch, sites)
    idx = torch.tensor([0, 5, 17, 63])
    mask = NeuronMask.from_sites({site_name: idx}, sites)
    with mask.applied(model):
        after, _ = record(model, batch, sites)
    pruned, kept = after[site_name][..., idx], torch.ones(after[site_name].shape[-1], dtype=torch.bool)
    kept[idx] = False
    assert torch.all(pruned == 0)
    assert torch.equal(after[site_name][..., kept], before[site_name][..., kept])
    assert before[site_name][..., idx].abs().sum() > 0  # the test would notice nothing was pruned


def test_every_pruned_neuron_outputs_zero_and_modes_agree(llava):
    model, _, batch = llava
    sites = find_sites(model)
    g = torch.Generator().manual_seed(0)
    indices = {s.name: torch.randperm(s.width, generator=g)[: s.width // 4] for s in sites}
    state = snapshot(model)
    neuron = NeuronMask.from_sites(indices, sites, mode="neuron")
    with neuron.applied(model):
        acts, logits_neuron = record(model, batch, sites)
    for name, idx in indices.items():
        assert torch.all(acts[name][..., idx] == 0), name
    with NeuronMask.from_sites(indices, sites, mode="activation").applied(model):
        assert_state_equal(model, state)  # weights untouched in activation mode
        _, logits_activation = record(model, batch, sites)
    assert torch.allclose(logits_neuron, logits_activation, atol=1e-5, rtol=1e-5)
    assert_state_equal(model, state)


def test_output_rows_zeroes_residual_channels(llava):
    model, _, batch = llava
    sites = find_sites(model)
    site = next(s for s in sites if s.name == "vision.0.fc2")
    outputs = []
    handle = site.out_module.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    try:
        with NeuronMask.from_sites({"vision.0.fc2": [1, 30]}, sites, mode="output_rows").applied(model):
            with torch.no_grad():
                model(**inputs(batch))
    finally:
        handle.remove()
    assert torch.all(outputs[0][..., [1, 30]] == 0) and outputs[0][..., 0].abs().sum() > 0
    with pytest.raises(ValueError, match="out of range.*residual channels"):
        NeuronMask.from_sites({"vision.0.fc2": [40]}, sites, mode="output_rows").apply(model)  # fc2 outputs 32


def test_restore_on_exception_and_misuse(llava):
    model, _, _ = llava
    sites = find_sites(model)
    state = snapshot(model)
    for mode in ("neuron", "output_rows", "activation"):
        mask = NeuronMask.from_sites({"language.1.down_proj": [2, 3], "vision.1.fc2": [4]}, sites, mode=mode)
        with pytest.raises(KeyError):
            with mask.apply(model):
                assert mask.is_applied
                raise KeyError("inside")
        assert not mask.is_applied
        assert_state_equal(model, state)
        assert all(not m._forward_pre_hooks for m in model.modules())
    mask.apply(model)
    with pytest.raises(RuntimeError, match="already applied"):
        mask.apply(model)
    mask.restore()
    with pytest.raises(RuntimeError, match="not applied"):
        mask.restore()


def test_check_fits_errors(llava):
    model, _, _ = llava
    sites = find_sites(model)
    with pytest.raises(ValueError, match="'language.7.down_proj' is not in this model"):
        NeuronMask({"language.7.down_proj": [1]}).check_fits(model)
    with pytest.raises(ValueError, match="made for 11008 neurons but the model's has 256"):
        NeuronMask({"language.0.down_proj": [1]}, meta={"widths": {"language.0.down_proj": 11008}}).check_fits(model)
    with pytest.raises(ValueError, match="index 256 at site 'language.0.down_proj' is out of range"):
        NeuronMask.from_sites({"language.0.down_proj": [3, 256]}, sites).check_fits(model)
    with pytest.raises(ValueError, match="not a site name"):
        NeuronMask({"down_proj": [1]})
    with pytest.raises(ValueError, match="non-negative integers"):
        NeuronMask({"language.0.down_proj": [-1]})
    with pytest.raises(ValueError, match="unknown prune mode"):
        NeuronMask({}, mode="rows")


def test_quantized_weights_need_activation_mode():
    model, make_batch = tiny_llava(seed=1)
    mlp = model.model.language_model.layers[0].mlp
    mlp.gate_proj.weight = torch.nn.Parameter(torch.zeros(256 * 64 // 2, 1, dtype=torch.uint8), requires_grad=False)
    state = snapshot(model)
    with pytest.raises(ValueError, match="use mode='activation'"):
        NeuronMask({"language.0.down_proj": [1], "language.1.down_proj": [1]}).apply(model)
    assert_state_equal(model, state)  # refused before touching anything


def test_save_load_roundtrip(llava, tmp_path):
    model, _, _ = llava
    sites = find_sites(model)
    mask = NeuronMask.from_sites({"language.0.down_proj": [9, 1, 1], "vision.1.fc2": []}, sites, mode="activation",
                                 model_id="tiny-llava", alpha=10.0, config={"formulation": "paper"})
    assert mask.indices["language.0.down_proj"].tolist() == [1, 9]  # sorted, unique
    mask.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mask.json", "mask.safetensors"]
    info = json.loads((tmp_path / "m" / "mask.json").read_text())
    assert info["model_id"] == "tiny-llava" and info["alpha"] == 10.0 and info["mode"] == "activation"
    assert info["counts"]["per_site"]["language.0.down_proj"] == {"selected": 2, "of": 256}
    assert info["counts"]["per_tower"]["vision"] == {"selected": 0, "of": 128}
    back = NeuronMask.load(tmp_path / "m")
    assert back.mode == "activation" and back.meta["config"] == {"formulation": "paper"}
    assert {k: v.tolist() for k, v in back.indices.items()} == {k: v.tolist() for k, v in mask.indices.items()}
    back.check_fits(model)
    assert "NeuronMask(mode='activation', 2 neurons: language 2/512, vision 0/128)" == repr(back)
    with pytest.raises(FileNotFoundError, match="does not hold a saved mask"):
        NeuronMask.load(tmp_path)


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(["neuron", "output_rows"]), seed=st.integers(0, 2 ** 16),
       fraction=st.floats(0, 1), repeat=st.integers(1, 2))
def test_apply_restore_identity_property(mode, seed, fraction, repeat):
    model, sites, state = _property_model()
    g = torch.Generator().manual_seed(seed)
    bound = {s.name: (s.out_module.out_features if mode == "output_rows" else s.width) for s in sites}
    indices = {n: torch.randperm(b, generator=g)[: int(fraction * b)] for n, b in bound.items()}
    mask = NeuronMask.from_sites(indices, sites, mode=mode)
    for _ in range(repeat):  # applying again after a restore must also come back exactly
        mask.apply(model)
        mask.restore()
    assert_state_equal(model, state)


_PROPERTY = {}


def _property_model():
    # Hypothesis cannot take function-scoped fixtures; build once and reuse.
    if not _PROPERTY:
        model, _ = tiny_llava(seed=2)
        _PROPERTY["v"] = (model, find_sites(model), snapshot(model))
    return _PROPERTY["v"]


def test_auto_is_resolved_by_one_function_not_by_the_mask():
    """prune_mode='auto' has one resolver (manu.choose_prune_mode); a mask asked for 'auto' says to call it."""
    with pytest.raises(ValueError, match=r"choose_prune_mode\(model, 'auto'\)"):
        NeuronMask({"language.0.down_proj": [1]}, mode="auto")
