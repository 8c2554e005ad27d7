"""Site discovery on tiny random-init MLLMs of four real families, recording hooks, token masks."""
import pytest
import torch
from torch import nn

from manu_lite.hooks import (NeuronSite, SiteWarning, find_sites, record_neurons, site_table,
                             token_mask_from_batch)
from manu_lite.stats import collect_stats
from tiny_models import BUILDERS

# Patches per image seen by each family's vision MLPs (CLIP keeps CLS: 16 + 1; Qwen2-VL: a 4x4 grid).
PATCHES = {"llava": 17, "qwen2_vl": 16, "idefics3": 16, "idefics2": 16}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    model, make_batch = BUILDERS[request.param](seed=0)
    return request.param, model, make_batch


def no_hooks_left(model):
    # Pre-hooks only: transformers installs its own forward (post) hooks for output capturing on first use.
    return all(not m._forward_pre_hooks for m in model.modules())


def test_find_sites_structure(family):
    name, model, _ = family
    sites = find_sites(model)
    assert [s.name for s in sites] == ["language.0.down_proj", "language.1.down_proj", "vision.0.fc2", "vision.1.fc2"]
    assert [s.width for s in sites] == [256, 256, 64, 64]
    for site in sites:
        # Never the bridge between towers (projector, connector, perceiver resampler, merger).
        assert not any(word in site.path for word in ("projector", "connector", "merger", "resampler"))
        assert site.in_projs == (("gate_proj", "up_proj") if site.tower == "language" else ("fc1",))
        assert site.out_module.in_features == site.width
    assert [s.name for s in find_sites(model, towers=("vision",))] == ["vision.0.fc2", "vision.1.fc2"]
    assert "NeuronSite('language.0.down_proj', width=256" in repr(sites[0])


def test_collect_stats_counts_every_family(family):
    name, model, make_batch = family
    sites = find_sites(model)
    image_batch, text_batch = make_batch(4, 32, seed=1), make_batch(4, 32, seed=2, image=False)
    multi = collect_stats(model, [image_batch], sites, positions="recall", progress=False)
    text = collect_stats(model, [text_batch], sites, positions="all", progress=False)
    recall = token_mask_from_batch(image_batch, "recall").sum().item()
    assert recall == 4 * 4  # 4 rows x 4 answer tokens
    assert multi["language.0.down_proj"].count.item() == recall
    assert multi["vision.1.fc2"].count.item() == 4 * PATCHES[name]
    assert text["language.1.down_proj"].count.item() == text_batch["attention_mask"].sum().item()
    assert text["vision.0.fc2"].count.item() == 0  # no image, the vision tower never ran
    for stats in (*multi.values(), text["language.0.down_proj"]):
        assert torch.isfinite(stats.sum_sq).all() and stats.sum_abs.sum() > 0
    assert no_hooks_left(model)


def test_record_neurons_shapes_and_cleanup_on_exception():
    model, make_batch = BUILDERS["llava"](seed=0)
    sites = find_sites(model)
    batch = make_batch(2, 24, seed=0)
    seen = {}
    with record_neurons(model, sites, lambda s, a: seen.__setitem__(s.name, tuple(a.shape))), torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "labels"})
    assert seen == {"language.0.down_proj": (2, 24, 256), "language.1.down_proj": (2, 24, 256),
                    "vision.0.fc2": (2, 17, 64), "vision.1.fc2": (2, 17, 64)}
    assert no_hooks_left(model)

    def explode(site, acts):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with record_neurons(model, sites, explode), torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    assert no_hooks_left(model)
    with pytest.raises(KeyError):
        with record_neurons(model, sites, lambda s, a: None):
            raise KeyError("raised inside the block")
    assert no_hooks_left(model)


def test_record_neurons_refuses_sites_of_another_model():
    model, _ = BUILDERS["llava"](seed=0)
    other, _ = BUILDERS["llava"](seed=1)
    with pytest.raises(ValueError, match="another model instance"):
        with record_neurons(model, find_sites(other), lambda s, a: None):
            pass
    assert no_hooks_left(model)


def test_find_sites_explains_when_nothing_found():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"(?s)no MLP neuron sites found.*sites=\[NeuronSite"):
        find_sites(model)


def test_site_by_hand_and_validation():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)
    mlp = MLP()
    site = NeuronSite(tower="vision", layer=2, mlp=mlp, in_projs=("fc1",), out_proj="fc2", width=8)
    assert site.name == "vision.2.fc2"
    with pytest.raises(ValueError, match="no submodule 'down_proj'"):
        NeuronSite(tower="language", layer=0, mlp=mlp, in_projs=("fc1",), out_proj="down_proj", width=8)
    with pytest.raises(ValueError, match="tower"):
        NeuronSite(tower="audio", layer=0, mlp=mlp, in_projs=("fc1",), out_proj="fc2", width=8)
    with pytest.raises(ValueError, match=r"width=6 but fc2\.in_features is 8"):
        NeuronSite(tower="vision", layer=0, mlp=mlp, in_projs=("fc1",), out_proj="fc2", width=6)

    class Fused(nn.Module):  # Phi-3 style: gate, up = gate_up_proj(x).chunk(2)
        def __init__(self):
            super().__init__()
            self.gate_up_proj, self.down_proj = nn.Linear(4, 16), nn.Linear(8, 4)
    fused = NeuronSite(tower="language", layer=0, mlp=Fused(), in_projs=("gate_up_proj",), out_proj="down_proj",
                       width=8, fused=2)
    assert fused.in_rows(torch.tensor([1, 3])).tolist() == [1, 3, 9, 11]  # the gate rows, then the up rows
    assert site.in_rows(torch.tensor([1, 3])).tolist() == [1, 3]
    assert "fused=2" in repr(fused)
    with pytest.raises(ValueError, match=r"gate_up_proj has 16 output rows but fused x width is 1 x 8.*fused=2"):
        NeuronSite(tower="language", layer=0, mlp=Fused(), in_projs=("gate_up_proj",), out_proj="down_proj", width=8)
    with pytest.raises(ValueError, match="positive integer"):
        NeuronSite(tower="language", layer=0, mlp=Fused(), in_projs=("gate_up_proj",), out_proj="down_proj",
                   width=8, fused=0)


def test_site_table_lists_sites_and_what_was_left_out(family):
    name, model, _ = family
    rows = site_table(model)
    assert sorted(r["site"] for r in rows if r["status"] == "site") == sorted(s.name for s in find_sites(model))
    for row in rows:
        assert set(row) == {"path", "module", "tower", "layer", "layout", "width", "site", "status", "reason"}
        if row["status"] == "excluded":
            assert row["reason"] and row["site"] is None
    # The bridge between the towers is listed as such, not dropped from view (Idefics' perceiver resampler,
    # Qwen2-VL's merger; LLaVA's projector is two bare Linear layers, Idefics3's connector one).
    bridge = [r for r in rows if r["tower"] is None]
    assert all("bridge" in r["reason"] for r in bridge)
    if name in ("idefics2", "qwen2_vl"):
        assert bridge, name
    vision_only = site_table(model, ("vision",))
    assert {r["site"] for r in vision_only if r["status"] == "site"} == {"vision.0.fc2", "vision.1.fc2"}
    assert any("not asked for" in r["reason"] for r in vision_only)


def test_token_mask_by_hand():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 8, 9]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
             "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, -100, -100, -100, 9]])}
    # Position t recalls when token t+1 is an answer token.
    assert token_mask_from_batch(batch, "recall").tolist() == [[False, True, True, False, False],
                                                               [False, False, False, True, False]]
    assert token_mask_from_batch(batch, "all").tolist() == [[True] * 4 + [False], [True] * 5]
    with pytest.raises(ValueError, match="needs 'labels'"):
        token_mask_from_batch({k: v for k, v in batch.items() if k != "labels"}, "recall")
    with pytest.raises(ValueError, match="unknown positions"):
        token_mask_from_batch(batch, "answers")


def test_a_list_of_routed_expert_mlps_is_listed_and_warned_about():
    """Experts kept as a list of MLP modules (``mlp.experts.N``, older Mixtral style): each matches a layout, but
    its index is an expert, not a layer — excluded, named in the warning and the site table, never a name clash."""
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts, self.shared_expert = nn.ModuleList([MLP(), MLP(), MLP()]), MLP()

    model = nn.Module()
    model.layers = nn.ModuleList([nn.ModuleDict({"mlp": MoE()}) for _ in range(2)])
    with pytest.warns(SiteWarning, match=r"(?s)6 routed-expert module\(s\).*layers\.0\.mlp\.experts\.0 \(MLP\): routed "
                                         r"expert 0 of a mixture of experts: NOT scored"):
        sites = find_sites(model, ("language",))
    assert [s.path for s in sites] == ["layers.0.mlp.shared_expert", "layers.1.mlp.shared_expert"]
    experts = [r for r in site_table(model, ("language",)) if r["status"] == "experts"]
    assert [(r["path"], r["layer"]) for r in experts] == [(f"layers.{i}.mlp.experts.{e}", i)
                                                          for i in range(2) for e in range(3)]
