"""Site discovery pinned where the site tests did not reach (issue 19, mutation survivors): why a module is not a
site (width disagreement, read off by hand), the audio exclusion, the unused-layer reason, layout validation,
``NeuronSite`` rows and repr, and where an offloaded module computes."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from manu_lite import sites
from manu_lite.sites import NeuronSite, execution_device, register_mlp_layout, site_table, unused_layers


class _MLP(nn.Module):
    def __init__(self, hidden=8, produce=6, read=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, produce), nn.Linear(read, 4)


def _layers(*mlps):
    model = nn.Module()
    model.layers = nn.ModuleList(mlps)
    return model


def test_a_layout_with_disagreeing_widths_says_which_widths():
    # exactly the children fc1/fc2 of the fc1 -> fc2 layout, fc1 writing 6 where fc2 reads 8
    rows = site_table(_layers(_MLP(produce=6, read=8)), ("language",))
    (row,) = [r for r in rows if r["path"] == "layers.0"]
    assert (row["status"], row["module"], row["layer"]) == ("unrecognized", "_MLP", 0)
    assert row["reason"].endswith("; has fc1/fc2 but their widths disagree (fc2 reads 8, the inputs write [6])")


def test_unused_layer_reason_is_stated_exactly():
    vision = SimpleNamespace(num_hidden_layers=3)
    model = SimpleNamespace(config=SimpleNamespace(vision_feature_layer=-2, vision_config=vision))
    # hidden_states[-2] of 3 layers = hidden_states[2] = layer 1's output: layer 2 is unused
    assert unused_layers(model) == {2: "vision_feature_layer=-2 reads hidden_states up to index 2: layer 2's output "
                                       "never reaches the language model"}
    no_count = SimpleNamespace(config=SimpleNamespace(vision_feature_layer=-2, vision_config=SimpleNamespace()))
    assert unused_layers(no_count) == {}


@pytest.mark.parametrize("in_projs, out_proj", [((), "w2"), (("w1", ""), "w2"), (("w1", 3), "w2"), (("w1",), "")])
def test_register_mlp_layout_refuses_empty_or_non_string_names(in_projs, out_proj):
    before = sites.MLP_LAYOUTS
    with pytest.raises(ValueError, match=r"^a layout is \(non-empty tuple of input projection names, output "
                                         r"projection name\), got "):
        register_mlp_layout(in_projs, out_proj)
    assert sites.MLP_LAYOUTS == before


def test_in_rows_are_int64_for_any_integer_input_and_repr_names_the_path():
    site = NeuronSite(tower="language", layer=0, mlp=_MLP(produce=8), in_projs=("fc1",), out_proj="fc2", width=8)
    rows = site.in_rows(torch.tensor([3, 1], dtype=torch.int32))
    assert rows.dtype == torch.int64 and rows.tolist() == [3, 1]
    assert repr(site) == "NeuronSite('language.0.fc2', width=8)"
    site = NeuronSite(tower="language", layer=0, mlp=site.mlp, in_projs=("fc1",), out_proj="fc2", width=8,
                      path="model.layers.0.mlp")
    assert repr(site) == "NeuronSite('language.0.fc2', width=8, path='model.layers.0.mlp')"


def test_an_offloaded_module_computes_on_its_hooks_execution_device():
    linear = nn.Linear(2, 2, device="meta")
    assert execution_device(linear) is None  # meta weights, no hook: nowhere to compute
    linear._hf_hook = SimpleNamespace(execution_device="cpu")
    assert execution_device(linear) == torch.device("cpu")
    linear._hf_hook = SimpleNamespace(execution_device=0)
    assert execution_device(linear) == torch.device("cuda:0")
    resident = nn.Linear(2, 2)
    resident._hf_hook = SimpleNamespace(execution_device=0)
    assert execution_device(resident) == torch.device("cpu")  # weights in place: where they are


def test_a_known_layout_outside_a_layer_list_is_listed_as_excluded_with_its_class():
    model = _layers(_MLP(produce=8))
    model.head = _MLP(produce=8)  # fc1 -> fc2 with matching widths, but no layer index: a pooling head
    rows = {r["path"]: r for r in site_table(model, ("language",))}
    assert rows["layers.0"]["status"] == "site" and rows["layers.0"]["site"] == "language.0.fc2"
    head = rows["head"]
    assert (head["status"], head["module"], head["site"]) == ("excluded", "_MLP", None)
    assert head["reason"] == "a known layout outside a numbered layer list (e.g. a pooling head), not a layer's MLP"


class _Container(nn.Module):
    """MLP-like by name (``mlp``) but no known layout itself, holding an MLP-like ``ffn`` whose widths disagree."""

    def __init__(self):
        super().__init__()
        self.ffn, self.norm = _MLP(produce=6, read=8), nn.LayerNorm(4)


def test_an_unrecognized_module_inside_an_unrecognized_one_gets_its_own_row():
    layer = nn.Module()
    layer.mlp = _Container()
    rows = {r["path"]: r for r in site_table(_layers(layer), ("language",))}
    # nothing known sits inside layers.0.mlp, so both it and its ffn are listed, each with its own reason
    assert rows["layers.0.mlp"]["status"] == rows["layers.0.mlp.ffn"]["status"] == "unrecognized"
    assert rows["layers.0.mlp"]["reason"].endswith("; not a known layout (gate_proj/up_proj -> down_proj or "
                                                   "gate_up_proj -> down_proj or fc1 -> fc2 or "
                                                   "linear_fc1 -> linear_fc2)")
    assert rows["layers.0.mlp.ffn"]["reason"].endswith("widths disagree (fc2 reads 8, the inputs write [6])")


class _VisionModel(nn.Module):
    """A vision tower of three layers: 0 and 1 hold fc1/fc2 MLPs, 2 holds none (a layer find_sites would skip);
    ``vision_feature_layer=-3`` reads hidden_states[1], so layers 1 and 2 never reach the language model."""

    def __init__(self):
        super().__init__()
        blocks = []
        for k in range(3):
            block = nn.Module()
            block.mlp = _MLP(produce=8) if k < 2 else nn.Identity()
            blocks.append(block)
        self.vision_tower = nn.Module()
        self.vision_tower.layers = nn.ModuleList(blocks)
        self.config = SimpleNamespace(vision_feature_layer=-3, vision_config=SimpleNamespace(num_hidden_layers=3))


def test_unused_sites_is_strict_by_default_and_warns_from_the_callers_line_when_not():
    model = _VisionModel()
    with pytest.raises(ValueError, match=r"vision layer\(s\) \[2\] of vision_tower\.layers \(3 layers\) have no MLP"):
        sites.unused_sites(model)
    with pytest.raises(ValueError, match=r"vision layer\(s\) \[2\]"):
        sites.candidate_sites(model)
    with pytest.warns(sites.SiteWarning, match=r"strict=False: going on with the 2 sites found") as caught:
        unused = sites.unused_sites(model, strict=False)
    assert unused == {"vision.1.fc2": "vision_feature_layer=-3 reads hidden_states up to index 1: layer 1's output "
                                      "never reaches the language model"}
    with pytest.warns(sites.SiteWarning) as caught:
        found = sites.find_sites(model, ("vision",), strict=False)
    assert [s.name for s in found] == ["vision.0.fc2", "vision.1.fc2"]
    assert [_outside_the_package(w.filename) for w in caught] == [True]


def _outside_the_package(filename):
    """stacklevel=2: a warning names the line that called find_sites (this file; under mutmut its trampoline),
    never a line of the package itself, where a reader could not act on it."""
    return not os.path.abspath(filename).startswith(os.path.dirname(os.path.abspath(sites.__file__)) + os.sep)


def test_the_routed_experts_warning_names_the_callers_line():
    layer = nn.Module()
    layer.mlp = _MLP(produce=8)
    layer.experts = nn.ModuleList([_MLP(produce=8), _MLP(produce=8)])
    with pytest.warns(sites.SiteWarning, match=r"2 routed-expert module\(s\)") as caught:
        found = sites.find_sites(_layers(layer), ("language",))
    assert [s.name for s in found] == ["language.0.fc2"]
    assert [_outside_the_package(w.filename) for w in caught] == [True]
