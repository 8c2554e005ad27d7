"""Streaming statistics, the three methods (paper, reference, balanced) on hand-computed examples, exact selection."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manu_lite.config import ManuConfig
from manu_lite.hooks import find_sites
from manu_lite.importance import (
    balanced_rendering_score,
    n_selected,
    paper_components,
    paper_score,
    reference_score,
    score_neurons,
    score_per_rendering,
    select,
    select_neurons,
    select_threshold,
    select_union,
    selection_summary,
)
from manu_lite.stats import NeuronStats, StatsTable, collect_stats
from tiny_models import direct_stats, stored_activations, tiny_llava

TAU = 0.5


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(seed=0)


def close(a, b, rtol=1e-6, atol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          rtol=rtol, atol=atol)


# ---- streaming == direct -----------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["recall", "all"])
def test_streamed_equals_direct_on_stored_activations(llava, positions):
    model, make_batch = llava
    sites = find_sites(model)
    batches = [make_batch(3, 28, seed=s) for s in range(3)]
    streamed = collect_stats(model, batches, sites, positions=positions, tau=TAU, progress=False)
    stored = stored_activations(model, batches, sites, positions)
    for name, acts in stored.items():
        want, got = direct_stats(acts, TAU), streamed[name]
        assert got.count.item() == want["count"]
        assert torch.equal(got.count_above, want["count_above"])  # counts are exact
        for field in ("sum_abs", "sum", "sum_sq"):
            assert close(getattr(got, field), want[field], rtol=1e-5, atol=1e-6), (name, field)


def test_independent_of_batching_and_merge_order(llava):
    model, make_batch = llava
    sites = find_sites(model)
    big = make_batch(6, 28, seed=7)
    halves = [{k: v[:3] for k, v in big.items()}, {k: v[3:] for k, v in big.items()}]
    whole = collect_stats(model, [big], sites, progress=False)
    split = collect_stats(model, halves, sites, progress=False)
    parts = [collect_stats(model, [h], sites, progress=False) for h in halves]
    for merged in (split, parts[0] + parts[1], parts[1] + parts[0], sum(parts)):
        for name in whole:
            assert merged[name].count.item() == whole[name].count.item()
            assert torch.equal(merged[name].count_above, whole[name].count_above)
            assert close(merged[name].sum_sq, whole[name].sum_sq, rtol=1e-5, atol=1e-6)
            assert close(merged[name].sum, whole[name].sum, rtol=1e-5, atol=1e-5)


def test_collect_refuses_nan_and_empty_recall():
    model, make_batch = tiny_llava(seed=3)
    with torch.no_grad():
        model.model.language_model.layers[1].mlp.up_proj.weight[5, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*language\.1\.down_proj"):
        collect_stats(model, [make_batch(2, 24)], progress=False)
    model, make_batch = tiny_llava(seed=3)
    batch = make_batch(2, 24)
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="every label is -100"):
        collect_stats(model, [batch], progress=False)
    with pytest.raises(ValueError, match="no batches"):
        collect_stats(model, [], progress=False)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_stats_table_save_load_and_add_errors(tmp_path):
    table = StatsTable({"language.0.down_proj": NeuronStats.from_activations(torch.randn(5, 4), TAU)})
    table.save(tmp_path / "s.safetensors")
    back = StatsTable.load(tmp_path / "s.safetensors")
    for field, t in table["language.0.down_proj"].tensors().items():
        assert torch.equal(back["language.0.down_proj"].tensors()[field], t)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temporary file left behind
    with pytest.raises(ValueError, match="different sites"):
        table + StatsTable({"vision.0.fc2": NeuronStats.zeros(4, TAU)})
    with pytest.raises(ValueError, match="tau"):
        table["language.0.down_proj"] + NeuronStats.zeros(4, 0.1)
    with pytest.raises(ValueError, match="width"):
        table["language.0.down_proj"] + NeuronStats.zeros(3, TAU)


def test_all_reduce_sums_across_processes(tmp_path):
    from dist_worker import all_reduce_worker

    # fork: the children reuse the imported torch (spawn would re-import it: ~10 s on a busy machine).
    torch.multiprocessing.start_processes(all_reduce_worker, args=(str(tmp_path / "rendezvous"),), nprocs=2,
                                          start_method="fork")


# ---- the formulations on a hand-computed example -----------------------------------------------------------
def hand_stats():
    """Two neurons (columns), tau = 0.5. Rows are tokens."""
    t = lambda rows: NeuronStats.from_activations(torch.tensor(rows, dtype=torch.float64), TAU)  # noqa: E731
    return {
        # n0: 1, -3 -> mean|a| 2, freq 1, var 5 - 1 = 4, mean a^2 5;  n1: 2, 0 -> 1, 0.5, var 2 - 1 = 1, mean a^2 2
        ("forget", "image_text"): t([[1, 2], [-3, 0]]),
        # n0: 1, 1, 1 -> 1, 1, 0, 1;  n1: all 0
        ("forget", "text_only"): t([[1, 0], [1, 0], [1, 0]]),
        # n0: 2, 2 -> 2, 1, 0, 4;  n1: 1, -1 -> 1, 1, var 1, 1
        ("retain", "image_text"): t([[2, 1], [2, -1]]),
        # n0: 0, 4 -> 2, 0.5, var 8 - 4 = 4, 8;  n1: 1, 1 -> 1, 1, 0, 1
        ("retain", "text_only"): t([[0, 1], [4, 1]]),
    }


EPS = 1e-9


def test_paper_formulation_by_hand():
    """The equations as written (DESIGN §2a): N a count and Z² a sum by default."""
    s = hand_stats()
    f = paper_components(s[("forget", "image_text")], s[("forget", "text_only")], eps=EPS)
    # n0: multi 1, -3 (Z̄ 2, N 2, Var 4, Z² 10); text 1, 1, 1 (Z̄ 1, N 3, Var 0, Z² 3)
    #   |2-1|/3, |2-3|/5, sqrt(4+0), sqrt(|10-3|/13)
    # n1: multi 2, 0 (Z̄ 1, N 1, Var 1, Z² 4); text 0, 0, 0 -> 1, 1, sqrt(1), sqrt(4/4)
    assert close(f["abs"], [1 / 3, 1]) and close(f["freq"], [1 / 5, 1])
    assert close(f["var"], [2, 1]) and close(f["rms"], [math.sqrt(7 / 13), 1])
    r = paper_components(s[("retain", "image_text")], s[("retain", "text_only")], eps=EPS)
    # n0: multi 2, 2 (2, N 2, 0, Z² 8); text 0, 4 (2, N 1, 4, Z² 16) -> 0, 1/3, 2, sqrt(8/24)
    # n1: multi 1, -1 (1, 2, 1, 2); text 1, 1 (1, 2, 0, 2) -> 0, 0, 1, 0
    assert close(r["abs"], [0, 0]) and close(r["freq"], [1 / 3, 0])
    assert close(r["var"], [2, 1]) and close(r["rms"], [math.sqrt(1 / 3), 0])
    i_f = [1 / 3 + 1 / 5 + 2 + math.sqrt(7 / 13), 4.0]
    i_r = [1 / 3 + 2 + math.sqrt(1 / 3), 1.0]
    score = paper_score(*(s[k] for k in hand_stats()), eps=EPS)
    assert close(score, [i_f[0] / i_r[0], 4.0])
    assert close(score, [1.12246, 4.0], rtol=1e-5)
    # The per-token reading (paper_reduction="mean"): N and Z² divided by each rendering's token count.
    fm = paper_components(s[("forget", "image_text")], s[("forget", "text_only")], eps=EPS, reduction="mean")
    assert close(fm["freq"], [0, 1]) and close(fm["rms"], [math.sqrt(2 / 3), 1])
    mean = paper_score(*(s[k] for k in hand_stats()), eps=EPS, reduction="mean")
    assert close(mean, [(1 / 3 + 2 + math.sqrt(2 / 3)) / i_r[0], 4.0])
    # Weights: only the variance term.
    only_var = paper_score(*(s[k] for k in hand_stats()), eps=EPS, weights={"var": 1})
    assert close(only_var, [2 / 2, 1 / 1])
    # The config field routes the reading; there is no untyped extra dict.
    stats = {key: {"language.0.down_proj": v} for key, v in s.items()}
    assert close(score_neurons(stats, ManuConfig(epsilon=EPS))["language.0.down_proj"], score)
    assert close(score_neurons(stats, ManuConfig(epsilon=EPS, paper_reduction="mean"))["language.0.down_proj"], mean)
    assert not hasattr(ManuConfig(), "extra")


def test_paper_formulation_on_vision_neurons_by_hand():
    """Text never reaches the vision tower: its text-only statistics are empty and S_n = (3 + σ_f) / (3 + σ_r)."""
    s = hand_stats()
    empty = NeuronStats.zeros(2, TAU)
    score = paper_score(s[("forget", "image_text")], empty, s[("retain", "image_text")], empty, eps=EPS)
    # forget multi σ = (2, 1), every neuron has Z̄, N, Z² > 0 -> I = 1 + 1 + σ + 1; retain multi σ = (0, 1).
    assert close(score, [(3 + 2) / (3 + 0), (3 + 1) / (3 + 1)], rtol=1e-6)
    stats = {key: {"language.0.down_proj": v, "vision.0.fc2": v if key[1] == "image_text" else empty}
             for key, v in s.items()}
    as_written = score_neurons(stats, ManuConfig(epsilon=EPS))
    assert close(as_written["vision.0.fc2"], score)
    excluded = score_neurons(stats, ManuConfig(epsilon=EPS, paper_vision="exclude"))
    assert list(excluded) == ["language.0.down_proj"]
    assert select(stats, ManuConfig(alpha=50, paper_vision="exclude"))["language.0.down_proj"].tolist() == [1]


def test_reference_formulation_by_hand():
    s = hand_stats()
    # Unbiased std (the code's torch.std). text_only, n0: F = 1, 1, 1 (abs 1, std 0, rms 1), R = 0, 4 (abs 2,
    # std sqrt(8/1), rms sqrt 8); weights abs 2, freq 0, var 2, rms 2:
    #   2(1/2 - 1) + 2(0/sqrt 8 - 1) + 2(1/sqrt(8) - 1)
    # n1: F = all 0, R = (abs 1, std 0, rms 1): 2(0 - 1) + 2(0/eps - 1) + 2(0 - 1) = -6
    text = reference_score(s[("forget", "text_only")], s[("retain", "text_only")], eps=EPS)
    assert close(text, [-3 - 2 * (1 - 1 / math.sqrt(8)), -6.0])
    # image_text, n1: F = 2, 0 (abs 1, std sqrt 2, rms sqrt 2), R = 1, -1 (1, sqrt 2, 1): 0 + 0 + 2(sqrt 2 - 1)
    # n0: F = 1, -3 (abs 2, std sqrt 8, rms sqrt 5), R = 2, 2 (2, std 0, rms 2): 2 (sqrt 8 / eps - 1) explodes.
    image = reference_score(s[("forget", "image_text")], s[("retain", "image_text")], eps=1e-5)
    assert close(image, [2 * (math.sqrt(8) / 1e-5 - 1) + 2 * (math.sqrt(5) / 2 - 1), 2 * (math.sqrt(2) - 1)],
                 rtol=1e-4)
    # The balanced method's score within one rendering: weighted magnitudes (population std), forget over retain.
    # text_only n0: (1 + 1 + 0 + 1) / (2 + .5 + 2 + sqrt 8)
    assert close(balanced_rendering_score(s[("forget", "text_only")], s[("retain", "text_only")], eps=EPS)[0],
                 3 / (4.5 + math.sqrt(8)))


def test_score_neurons_routes_sites_by_formulation():
    hand = hand_stats()
    stats = {key: {"language.0.down_proj": st_, "vision.0.fc2": st_} for key, st_ in hand.items()}
    paper = score_neurons(stats, ManuConfig(formulation="paper", epsilon=EPS))
    assert close(paper["language.0.down_proj"], [1.12246, 4.0], rtol=1e-5)
    ref = score_neurons(stats, ManuConfig(formulation="reference", epsilon=EPS))
    assert close(ref["language.0.down_proj"], reference_score(hand[("forget", "text_only")],
                                                              hand[("retain", "text_only")], eps=EPS))
    assert close(ref["vision.0.fc2"], reference_score(hand[("forget", "image_text")],
                                                      hand[("retain", "image_text")], eps=EPS))
    only_language = score_neurons(stats, ManuConfig(towers=("language",)))
    assert list(only_language) == ["language.0.down_proj"]
    per = score_per_rendering(stats, ManuConfig(formulation="balanced", epsilon=EPS))
    assert set(per) == {"image_text", "text_only"}
    with pytest.raises(ValueError, match="per rendering"):
        score_neurons(stats, ManuConfig(formulation="balanced"))
    # A site that saw no token in a rendering (vision on text-only inputs) is not ranked there.
    stats[("forget", "text_only")] = {**stats[("forget", "text_only")], "vision.0.fc2": NeuronStats.zeros(2, TAU)}
    assert "vision.0.fc2" not in score_per_rendering(stats, ManuConfig(formulation="balanced"))["text_only"]
    with pytest.raises(ValueError, match="missing"):
        score_neurons({k: v for k, v in stats.items() if k[1] == "text_only"}, ManuConfig(formulation="paper"))


def test_config_names_and_legacy_dicts():
    assert ManuConfig().selection_scope == "global"
    assert ManuConfig(formulation="reference").selection_scope == "tower"
    assert ManuConfig(formulation="balanced", scope="layer").selection_scope == "layer"
    with pytest.raises(ValueError, match="emulate"):
        ManuConfig(formulation="paper", emulate_released_defects=True)
    with pytest.raises(ValueError, match="paper_reduction"):
        ManuConfig(paper_reduction="token")
    old = {"formulation": "paper", "selection": "union", "extra": {}, "alpha": 30.0}
    assert ManuConfig.from_dict(old).formulation == "balanced"
    old = {"formulation": "paper", "selection": "combined", "extra": {"reduction": "mean"}}
    assert ManuConfig.from_dict(old).paper_reduction == "mean"


# ---- the released code's selection ------------------------------------------------------------------------
def test_select_threshold_per_tower_floor_and_ties():
    """By hand from the released code: per tower k = int(p/100 · n); threshold = k-th largest; score >= it."""
    scores = {"language.0.down_proj": torch.tensor([1.0, 3.0, 3.0, 0.0]),
              "language.1.down_proj": torch.tensor([2.0, 3.0, 0.5, 0.0]),
              "vision.0.fc2": torch.tensor([3.0, 2.0, 5.0, 0.0, 0.0, 1.0])}
    # alpha 30: language n = 8 -> k = int(2.4) = 2, the 2nd largest is 3.0, and three neurons tie at 3.0: all kept.
    #           vision n = 6 -> k = int(1.8) = 1 (floor, not round): only the 5.0.
    t = select_threshold(scores, 30)
    assert t["language.0.down_proj"].tolist() == [1, 2] and t["language.1.down_proj"].tolist() == [1]
    assert t["vision.0.fc2"].tolist() == [2]
    # alpha 10: vision k = int(0.6) = 0 selects nothing; language k = int(0.8) = 0 too.
    assert all(len(v) == 0 for v in select_threshold(scores, 10).values())
    # One threshold per tower, not one global threshold: vision's 3.0 would tie into a global top-4.
    stats = {key: {"language.0.down_proj": v, "vision.0.fc2": v} for key, v in hand_stats().items()}
    ref = select(stats, ManuConfig(formulation="reference", alpha=50, epsilon=EPS))
    # language (text_only) scores [-1.29.., -6] and vision (image_text) [huge, 0.83]: k = 1 per tower.
    assert ref["language.0.down_proj"].tolist() == [0] and ref["vision.0.fc2"].tolist() == [0]


# ---- numerically robust statistics --------------------------------------------------------------------------
def test_constant_neuron_has_zero_std_in_float32():
    x = torch.full((1000, 3), 0.3, dtype=torch.float32)
    s = NeuronStats.zeros(3, TAU)
    for chunk in x.split(64):
        s.update_(chunk)
    assert torch.equal(s.std, torch.zeros(3, dtype=torch.float64)) and torch.equal(s.std_unbiased, s.std)


@pytest.mark.parametrize("chunk", [1000, 37, 1])
def test_std_relative_error_when_mean_is_1000_times_the_spread(chunk):
    g = torch.Generator().manual_seed(0)
    x = (1000.0 + torch.randn(1000, 8, generator=g, dtype=torch.float64)).float()
    want = x.double().std(0, unbiased=False)
    s = NeuronStats.zeros(8, TAU)
    for part in x.split(chunk):
        s.update_(part)
    assert ((s.std - want) / want).abs().max() < 1e-6
    assert ((s.std_unbiased - x.double().std(0)) / want).abs().max() < 1e-6
    halves = NeuronStats.from_activations(x[:333], TAU) + NeuronStats.from_activations(x[333:], TAU)
    assert ((halves.std - want) / want).abs().max() < 1e-6


# ---- selection ---------------------------------------------------------------------------------------------
def test_n_selected_rounding():
    assert n_selected(10, 256) == 26  # 25.6
    assert n_selected(12.5, 4) == 1  # 0.5 rounds up
    assert n_selected(0.7, 500) == 4  # 3.5 exactly, though 0.7 * 500 / 100 < 3.5 in floating point
    assert n_selected(100, 7) == 7 and n_selected(1, 10) == 0
    with pytest.raises(ValueError):
        n_selected(0, 10)


def test_select_neurons_ties_and_scopes():
    scores = {"language.0.down_proj": torch.tensor([1.0, 3.0, 3.0, 0.0]),
              "vision.0.fc2": torch.tensor([3.0, 2.0, 5.0, 0.0, 0.0, 1.0])}
    # global: N = 10, 30 % -> 3: the 5, then the three 3.0 ties by position (language first).
    g = select_neurons(scores, 30, "global")
    assert g["language.0.down_proj"].tolist() == [1, 2] and g["vision.0.fc2"].tolist() == [2]
    # tower/layer: round(1.2) = 1 and round(1.8) = 2 per unit.
    t = select_neurons(scores, 30, "tower")
    assert t["language.0.down_proj"].tolist() == [1] and t["vision.0.fc2"].tolist() == [0, 2]
    layer = select_neurons(scores, 30, "layer")  # each site is its own unit: same as per tower here
    assert {k: v.tolist() for k, v in layer.items()} == {k: v.tolist() for k, v in t.items()}
    with pytest.raises(ValueError, match="NaN"):
        select_neurons({"language.0.down_proj": torch.tensor([float("nan"), 1.0])}, 50)


def test_select_union_interleaves_to_exact_count():
    a = {"language.0.down_proj": torch.tensor([9.0, 8.0, 1.0, 0.0, 0.0, 0.0])}
    b = {"language.0.down_proj": torch.tensor([0.0, 0.0, 9.0, 8.0, 7.0, 0.0])}
    # k = round(4/6 * 6) = 4: a gives 0, 1; b gives 2, 3 -> the union of the two top-2 sets.
    assert select_union([a, b], 100 * 4 / 6)["language.0.down_proj"].tolist() == [0, 1, 2, 3]
    # Overlap: b also ranks 0 first; interleaving a0, b0(=a0), a1, b2 ... fills to exactly k = 3.
    b2 = {"language.0.down_proj": torch.tensor([10.0, 0.0, 9.0, 0.0, 0.0, 0.0])}
    assert select_union([a, b2], 50)["language.0.down_proj"].tolist() == [0, 1, 2]
    # A site ranked by one rendering only (vision) still gets its share in its unit.
    v = {"vision.0.fc2": torch.tensor([0.0, 1.0])}
    out = select_union([{**a, **v}, b], 50, "tower")
    assert out["vision.0.fc2"].tolist() == [1] and len(out["language.0.down_proj"]) == 3


def test_select_end_to_end_and_summary():
    stats = {key: {"language.0.down_proj": s, "language.1.down_proj": s} for key, s in hand_stats().items()}
    chosen = select(stats, ManuConfig(alpha=50, epsilon=EPS))
    # Both sites have scores (1.12, 4): global 50 % of 4 neurons = the two 4.0s.
    assert {k: v.tolist() for k, v in chosen.items()} == {"language.0.down_proj": [1], "language.1.down_proj": [1]}
    summary = selection_summary(chosen, {"language.0.down_proj": 2, "language.1.down_proj": 2})
    assert summary["selected"] == 2 and summary["per_tower"] == {"language": {"selected": 2, "of": 4}}


# ---- properties --------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(widths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       alpha=st.floats(0.01, 100, allow_nan=False), scope=st.sampled_from(["global", "tower", "layer"]),
       seed=st.integers(0, 2 ** 16), ties=st.booleans())
def test_selection_count_and_order_property(widths, alpha, scope, seed, ties):
    g = torch.Generator().manual_seed(seed)
    names = [f"{'language' if i % 2 == 0 else 'vision'}.{i}.x" for i in range(len(widths))]
    scores = {n: (torch.randint(0, 3, (w,), generator=g).double() if ties else torch.randn(w, generator=g))
              for n, w in zip(names, widths)}
    chosen = select_neurons(scores, alpha, scope)
    units = {"global": [names], "layer": [[n] for n in names],
             "tower": [[n for n in names if n.startswith(t)] for t in ("language", "vision")]}[scope]
    for unit in units:
        if not unit:
            continue
        n_unit = sum(scores[n].numel() for n in unit)
        k = sum(len(chosen[n]) for n in unit)
        assert k == n_selected(alpha, n_unit) and abs(k - alpha * n_unit / 100) <= 0.5 + 1e-9
        picked = [scores[n][chosen[n]] for n in unit]
        rest = [scores[n][[i for i in range(scores[n].numel()) if i not in set(chosen[n].tolist())]] for n in unit]
        if k and k < n_unit:
            assert torch.cat(picked).min() >= torch.cat(rest).max()
    for n in names:
        assert torch.equal(chosen[n], chosen[n].unique())  # sorted, unique


@settings(max_examples=30, deadline=None)
@given(data=st.lists(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=3, max_size=3),
                     min_size=3, max_size=30),
       cuts=st.lists(st.integers(0, 30), max_size=4), order_seed=st.integers(0, 1000))
def test_merge_is_associative_and_commutative(data, cuts, order_seed):
    acts = torch.tensor(data, dtype=torch.float32)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    parts = [NeuronStats.from_activations(acts[a:b], TAU) for a, b in zip(bounds, bounds[1:])]
    order = torch.randperm(len(parts), generator=torch.Generator().manual_seed(order_seed)).tolist()
    left, shuffled = sum(parts), sum(parts[i] for i in order)
    whole = NeuronStats.from_activations(acts, TAU)
    for merged in (left, shuffled):
        assert merged.count.item() == whole.count.item()
        assert torch.equal(merged.count_above, whole.count_above)
        for field in ("sum_abs", "sum", "sum_sq", "m2"):
            assert close(getattr(merged, field), getattr(whole, field), rtol=1e-5, atol=1e-4)


# ---- sites the model never uses ----------------------------------------------------------------------------
def test_unused_vision_layers_are_no_candidates(llava):
    """LLaVA with vision_feature_layer=-2 (as LLaVA-1.5): the last CLIP layer's output never reaches the LM."""
    from manu_lite.hooks import candidate_sites, unused_layers, unused_sites

    model, _ = llava
    assert model.config.vision_feature_layer == -2 and model.config.vision_config.num_hidden_layers == 2
    # hidden_states[-2] = hidden_states[1] = the output of layer 0: layer 1 runs for nothing.
    assert list(unused_layers(model)) == [1]
    unused = unused_sites(model)
    assert list(unused) == ["vision.1.fc2"] and "vision_feature_layer=-2" in unused["vision.1.fc2"]
    assert [s.name for s in candidate_sites(model)] == ["language.0.down_proj", "language.1.down_proj",
                                                        "vision.0.fc2"]
    assert unused_sites(model, ("language",)) == {}
    model.config.vision_feature_layer = -1
    try:
        assert unused_layers(model) == {}
        model.config.vision_feature_layer = [0, 1]  # a list: used up to its largest, hidden_states[1]
        assert list(unused_layers(model)) == [1]
    finally:
        model.config.vision_feature_layer = -2
