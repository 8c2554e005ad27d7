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


def test_an_input_projection_wider_than_the_output_reads_but_no_whole_multiple_is_no_layout():
    # fc1 writes 12 where fc2 reads 8: not one block of 8 (nor a fused pair), so no site
    rows = site_table(_layers(_MLP(produce=12, read=8)), ("language",))
    (row,) = [r for r in rows if r["path"] == "layers.0"]
    assert (row["status"], row["site"]) == ("unrecognized", None)
    assert row["reason"].endswith("widths disagree (fc2 reads 8, the inputs write [12])")
    # 16 = 2 x 8 is a fused pair
    (fused,) = [r for r in site_table(_layers(_MLP(produce=16, read=8)), ("language",)) if r["path"] == "layers.0"]
    assert (fused["status"], fused["layout"], fused["width"]) == ("site", "fc1 -> fc2 (fused x2)", 8)


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)


def test_site_table_rows_of_an_audio_encoder_a_gated_layout_and_routed_fused_experts():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Module()])
    model.layers[0].mlp = _Gated()
    experts = nn.Module()
    experts.gate_up = nn.Parameter(torch.zeros(3, 4, 16))
    experts.down = nn.Parameter(torch.zeros(3, 8, 4))
    model.layers[0].experts = experts
    model.audio_tower = nn.Module()
    model.audio_tower.layers = nn.ModuleList([nn.Module()])
    model.audio_tower.layers[0].mlp = _Container()  # MLP-like, no known layout, in an audio encoder
    model.audio_tower.layers[0].ffn = _MLP(produce=8)  # a known layout in an audio encoder
    rows = {r["path"]: r for r in site_table(model, ("language",))}
    assert rows["layers.0.mlp"]["layout"] == "gate_proj/up_proj -> down_proj"
    audio = "an audio/speech encoder: MANU scores the language and vision towers only"
    assert {k: (rows[k]["status"], rows[k]["module"], rows[k]["tower"], rows[k]["reason"])
            for k in ("audio_tower.layers.0.mlp", "audio_tower.layers.0.ffn")} == {
        "audio_tower.layers.0.mlp": ("excluded", "_Container", None, audio),
        "audio_tower.layers.0.ffn": ("excluded", "_MLP", None, audio)}
    assert rows["layers.0.experts"]["status"] == "experts"
    assert rows["layers.0.experts"]["reason"] == (
        "routed experts with fused per-expert weights (3 experts, gate_up (3, 4, 16), down (3, 8, 4)): NOT scored — "
        "their neurons have no nn.Linear output projection to hook, so MANU leaves them untouched (only dense MLPs "
        "and shared experts are scored)")


@pytest.mark.parametrize("n_experts, ellipsis", [(3, False), (4, True)])
def test_the_experts_warning_shows_three_and_an_ellipsis_beyond(n_experts, ellipsis):
    layer = nn.Module()
    layer.mlp = _MLP(produce=8)
    layer.experts = nn.ModuleList([_MLP(produce=8) for _ in range(n_experts)])
    with pytest.warns(sites.SiteWarning) as caught:
        sites.find_sites(_layers(layer), ("language",))
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"find_sites: {n_experts} routed-expert module(s) of Module are NOT scored")
    shown = [line for line in message.split("\n") if line.startswith("  layers.0.experts.")]
    assert [line.split(" ")[2] for line in shown] == ["layers.0.experts.0", "layers.0.experts.1", "layers.0.experts.2"]
    assert ("\n  …\ncheck " in message) is ellipsis


def test_two_problems_are_one_message_a_line_apart():
    from manu_lite import site_messages

    # the language tower has a site in layer 0 but none in layer 1; the vision tower has none at all
    blocks = [nn.Module(), nn.Module()]
    blocks[0].mlp, blocks[1].mlp = _MLP(produce=8), nn.Identity()
    model = _layers(*blocks)
    rows = sites._survey(model, ("language", "vision"))
    found = [r.site for r in rows if r.site is not None]
    want = [site_messages.tower_missing(model, "vision", ("language", "vision"), rows),
            *site_messages.missing_layers(model, found, rows)]
    assert len(want) == 2
    with pytest.raises(ValueError) as error:
        sites.find_sites(model)
    assert str(error.value) == want[0] + "\n" + want[1]
