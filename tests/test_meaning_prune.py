"""NeuronMask pinned where the pruning tests did not reach (issue 19, mutation survivors): residual ``channels`` in
activation mode (a forward hook on the output projection), index copies on another device, the repr, and the saved
files (``mask.json`` is 2-space JSON; a missing file or a foreign format/version is refused, naming both)."""
from __future__ import annotations

import json

import pytest
import torch

from manu_lite.hooks import find_sites
from manu_lite.prune import FORMAT, VERSION, NeuronMask, _on_device
from tiny_models import inputs, tiny_llava


@pytest.fixture(scope="module")
def llava():
    model, make_batch = tiny_llava(seed=0)
    return model, make_batch(2, 20, seed=4)


def _out_of(model, site, batch):
    """The output projection's output [B, T, hidden] of ``site`` on ``batch``."""
    seen = []
    handle = site.out_module.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(**inputs(batch))
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("mode", ["activation", "neuron"])
def test_channels_zero_the_last_dim_of_the_mlp_output_and_nothing_else(llava, mode):
    model, batch = llava
    site = next(s for s in find_sites(model) if s.name == "language.0.down_proj")
    channels = torch.tensor([1, 6, 30])
    before = _out_of(model, site, batch)
    with NeuronMask.from_sites({}, [site], mode=mode, channels={site.name: channels}).applied(model):
        after = _out_of(model, site, batch)
    kept = torch.ones(before.shape[-1], dtype=torch.bool)
    kept[channels] = False
    assert before.dim() == 3 and before[..., channels].abs().min() > 0  # the test would see a no-op
    assert torch.all(after[..., channels] == 0)
    assert torch.equal(after[..., kept], before[..., kept])
    assert torch.equal(_out_of(model, site, batch), before)  # restored


def test_index_copies_follow_the_device_once_each():
    idx = torch.tensor([2, 0])
    copies = {torch.device("cpu"): idx}
    assert _on_device(copies, torch.device("cpu")) is idx
    meta = _on_device(copies, torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == (2,) and meta.dtype == idx.dtype
    assert _on_device(copies, torch.device("meta")) is meta  # one copy per device, made once


def test_repr_names_mode_counts_per_tower_and_state(llava):
    model, _ = llava
    sites = find_sites(model)
    lang = next(s for s in sites if s.name == "language.0.down_proj")
    mask = NeuronMask.from_sites({lang.name: torch.tensor([0, 3])}, sites)
    assert [s.width for s in sites] == [256, 256, 64, 64]  # language.0, language.1, vision.0, vision.1
    assert repr(mask) == "NeuronMask(mode='neuron', 2 neurons: language 2/512, vision 0/128)"
    assert repr(NeuronMask({lang.name: torch.tensor([4])})) == "NeuronMask(mode='neuron', 1 neurons: language 1)"
    rows = NeuronMask({lang.name: torch.tensor([4, 5, 9])}, mode="output_rows")
    assert repr(rows) == "NeuronMask(mode='output_rows', 3 output channels: language 3)"
    assert repr(NeuronMask({})) == "NeuronMask(mode='neuron', 0 neurons: none)"
    with_channels = NeuronMask({lang.name: torch.tensor([1])}, channels={lang.name: torch.tensor([2, 3])})
    with with_channels.applied(model):
        assert repr(with_channels) == ("NeuronMask(mode='neuron', 1 neurons: language 1, + 2 output channels, "
                                       "applied)")


def test_saved_json_is_two_space_and_stores_what_json_cannot_as_text(tmp_path):
    mask = NeuronMask({"language.0.down_proj": torch.tensor([1, 2])}, meta={"source": tmp_path / "stats"})
    info_text = (mask.save(tmp_path / "m") / "mask.json").read_text()
    info = json.loads(info_text)
    assert info["source"] == str(tmp_path / "stats") and (info["format"], info["version"]) == (FORMAT, VERSION)
    assert info_text.startswith('{\n  "')  # indent=2
    assert NeuronMask.load(tmp_path / "m").meta["source"] == str(tmp_path / "stats")


@pytest.mark.parametrize("missing", ["mask.json", "mask.safetensors"])
def test_load_refuses_a_directory_missing_either_file(tmp_path, missing):
    NeuronMask({"language.0.down_proj": torch.tensor([1])}).save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=r"does not hold a saved mask \(mask.json \+ mask.safetensors\); "
                                                r"write one with NeuronMask.save\(path\)$"):
        NeuronMask.load(tmp_path)


@pytest.mark.parametrize("field, value", [("format", "other-mask"), ("version", VERSION + 1)])
def test_load_refuses_another_format_or_version_and_names_both(tmp_path, field, value):
    NeuronMask({"language.0.down_proj": torch.tensor([1])}).save(tmp_path)
    info = json.loads((tmp_path / "mask.json").read_text())
    info[field] = value
    (tmp_path / "mask.json").write_text(json.dumps(info))
    want = {"format": FORMAT, "version": VERSION, field: value}
    with pytest.raises(ValueError, match=rf"is not a {FORMAT} v{VERSION} file \(format {want['format']!r}, "
                                         rf"version {want['version']!r}\)$"):
        NeuronMask.load(tmp_path)


class _Params4bit(torch.nn.Parameter):
    """Named like bitsandbytes' 4-bit weight (the check goes by the class name when no quant_state is set)."""


class _Int8Params(torch.nn.Parameter):
    pass


_Params4bit.__name__, _Int8Params.__name__ = "Params4bit", "Int8Params"


def _linear_with(weight: torch.Tensor, **attrs) -> torch.nn.Linear:
    linear = torch.nn.Linear(4, 3)
    linear.weight = weight if isinstance(weight, torch.nn.Parameter) else torch.nn.Parameter(weight,
                                                                                            requires_grad=False)
    for key, value in attrs.items():
        setattr(linear.weight, key, value)
    return linear


@pytest.mark.parametrize("make, problem", [
    (lambda: torch.nn.ReLU(), "ReLU has no weight matrix (a quantized kernel?)"),
    (lambda: _linear_with(torch.zeros(3, 4), quant_state=object()), "quantized or packed (Parameter, "),
    (lambda: _linear_with(torch.zeros(3, 4), SCB=object()), "quantized or packed (Parameter, "),
    (lambda: _linear_with(_Params4bit(torch.zeros(3, 4))), "quantized or packed (Params4bit, "),
    (lambda: _linear_with(_Int8Params(torch.zeros(3, 4))), "quantized or packed (Int8Params, "),
    (lambda: _linear_with(torch.zeros(3, 4, dtype=torch.int8)), "dtype torch.int8, shape (3, 4)"),
    (lambda: _linear_with(torch.zeros(6, 2)), "dtype torch.float32, shape (6, 2)), not a plain floating-point"),
    (lambda: _linear_with(torch.zeros(3, 4, device="meta")),
     "Linear weight is offloaded (on the meta device; accelerate loads it at each forward), so zeroing it in place "
     "would not stick"),
])
def test_weight_problem_names_each_kind_of_uneditable_weight(make, problem):
    from manu_lite.prune import weight_problem

    found = weight_problem(make())
    assert found is not None and problem in found
    assert weight_problem(torch.nn.Linear(4, 3)) is None


def test_weight_problem_of_a_module_with_a_weight_but_no_features():
    from manu_lite.prune import weight_problem

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(3, 4))  # no out_features/in_features: shape unknown
    assert "quantized or packed (Parameter, dtype torch.float32, shape (3, 4))" in weight_problem(module)


def test_mask_construction_errors_name_the_argument(llava):
    with pytest.raises(ValueError, match=r"^mode='output_rows' indices already are output channels; pass them as "
                                         r"indices, not channels$"):
        NeuronMask({}, mode="output_rows", channels={"language.0.down_proj": [1]})
    with pytest.raises(ValueError, match=r"^indices of language.0.down_proj must be a 1-D tensor"):
        NeuronMask({"language.0.down_proj": [[1]]})
    with pytest.raises(ValueError, match=r"^channels of language.0.down_proj must be a 1-D tensor"):
        NeuronMask({}, channels={"language.0.down_proj": [-1]})


def test_weight_modes_on_a_quantized_site_say_use_activation(llava):
    model, _ = llava
    site = next(s for s in find_sites(model) if s.name == "language.0.down_proj")
    original = site.out_module.weight
    site.out_module.weight = torch.nn.Parameter(original.detach().to(torch.int8), requires_grad=False)
    try:
        with pytest.raises(ValueError, match=r"use mode='activation', which masks activations and leaves weights "
                                             r"untouched \(NeuronMask\(indices, mode='activation'\)\)$"):
            NeuronMask({site.name: [0]}).apply(model)
    finally:
        site.out_module.weight = original


def test_fit_bounds_are_exclusive_and_empty_indices_fit(llava):
    model, _ = llava
    sites = {s.name: s for s in find_sites(model)}
    lang = sites["language.0.down_proj"]
    hidden = lang.out_module.out_features
    assert NeuronMask({lang.name: torch.tensor([], dtype=torch.long)}).check_fits(model).keys() == {lang.name}
    assert NeuronMask({}, channels={lang.name: []}).check_fits(model).keys() == {lang.name}
    NeuronMask({lang.name: [lang.width - 1]}).check_fits(model)            # the last neuron fits
    NeuronMask({}, channels={lang.name: [hidden - 1]}).check_fits(model)  # the last channel fits
    with pytest.raises(ValueError, match=rf"^mask index {lang.width} at site 'language.0.down_proj' is out of range: "
                                         rf"it has {lang.width} neurons$"):
        NeuronMask({lang.name: [lang.width]}).check_fits(model)
    with pytest.raises(ValueError, match=rf"it has {hidden} output channels \(output_rows indices are residual "
                                         r"channels, < hidden size\)$"):
        NeuronMask({lang.name: [hidden]}, mode="output_rows").check_fits(model)
    with pytest.raises(ValueError, match=rf"^mask channel {hidden} at site 'language.0.down_proj' is out of range"):
        NeuronMask({}, channels={lang.name: [hidden]}).check_fits(model)
