"""Streaming statistics, both formulations on a hand-computed example, exact selection."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manu_lite.config import ManuConfig
from manu_lite.hooks import find_sites
from manu_lite.importance import (
    n_selected,
    paper_components,
    paper_rendering_score,
    paper_score,
    reference_score,
    score_neurons,
    score_per_rendering,
    select,
    select_neurons,
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
    s = hand_stats()
    f = paper_components(s[("forget", "image_text")], s[("forget", "text_only")], eps=EPS)
    # n0: |2-1|/3, |1-1|/2, sqrt(4+0), sqrt(|5-1|/6);  n1: |1-0|/1, |.5-0|/.5, sqrt(1+0), sqrt(|2-0|/2)
    assert close(f["abs"], [1 / 3, 1]) and close(f["freq"], [0, 1])
    assert close(f["var"], [2, 1]) and close(f["rms"], [math.sqrt(2 / 3), 1])
    r = paper_components(s[("retain", "image_text")], s[("retain", "text_only")], eps=EPS)
    # n0: 0/4, |1-.5|/1.5, sqrt(0+4), sqrt(|4-8|/12);  n1: 0, 0, sqrt(1+0), 0
    assert close(r["abs"], [0, 0]) and close(r["freq"], [1 / 3, 0])
    assert close(r["var"], [2, 1]) and close(r["rms"], [math.sqrt(1 / 3), 0])
    i_f = [1 / 3 + 0 + 2 + math.sqrt(2 / 3), 4.0]
    i_r = [1 / 3 + 2 + math.sqrt(1 / 3), 1.0]
    score = paper_score(s[("forget", "image_text")], s[("forget", "text_only")],
                        s[("retain", "image_text")], s[("retain", "text_only")], eps=EPS)
    assert close(score, [i_f[0] / i_r[0], 4.0])
    assert close(score, [1.08216, 4.0], rtol=1e-5)
    # "sum" reduction: forget n0 has N 2 vs 3 tokens above tau and Z^2 10 vs 3 -> |2-3|/5 and sqrt(7/13).
    fs = paper_components(s[("forget", "image_text")], s[("forget", "text_only")], eps=EPS, reduction="sum")
    assert close(fs["freq"], [1 / 5, 1]) and close(fs["rms"], [math.sqrt(7 / 13), 1])
    # Weights: only the variance term.
    only_var = paper_score(*(s[k] for k in hand_stats()), eps=EPS, weights={"var": 1})
    assert close(only_var, [2 / 2, 1 / 1])


def test_reference_formulation_by_hand():
    s = hand_stats()
    # text_only, n0: F = (abs 1, std 0, rms 1), R = (abs 2, std 2, rms sqrt 8); weights abs 2, freq 0, var 2, rms 2
    #   2(1/2 - 1) + 2(0/2 - 1) + 2(1/sqrt(8) - 1) = -1 - 2 - 1.292893
    # n1: F = all 0, R = (abs 1, std 0, rms 1): 2(0 - 1) + 2(0/eps - 1) + 2(0 - 1) = -6
    text = reference_score(s[("forget", "text_only")], s[("retain", "text_only")], eps=EPS)
    assert close(text, [-3 - 2 * (1 - 1 / math.sqrt(8)), -6.0])
    # image_text, n1: F = (1, std 1, rms sqrt 2), R = (1, std 1, rms 1): 0 + 0 + 2(sqrt 2 - 1)
    # n0: retain std is 0, so 2 (2 / (0 + eps) - 1) explodes, as in the released code.
    image = reference_score(s[("forget", "image_text")], s[("retain", "image_text")], eps=1e-5)
    assert close(image, [2 * (2 / 1e-5 - 1) + 2 * (math.sqrt(5) / 2 - 1), 2 * (math.sqrt(2) - 1)], rtol=1e-4)
    # The union selection's paper score within one rendering: sum of magnitudes, forget over retain.
    # text_only n0: (1 + 1 + 0 + 1) / (2 + .5 + 2 + sqrt 8)
    assert close(paper_rendering_score(s[("forget", "text_only")], s[("retain", "text_only")], eps=EPS)[0],
                 3 / (4.5 + math.sqrt(8)))


def test_score_neurons_routes_sites_by_formulation():
    hand = hand_stats()
    stats = {key: {"language.0.down_proj": st_, "vision.0.fc2": st_} for key, st_ in hand.items()}
    paper = score_neurons(stats, ManuConfig(formulation="paper", epsilon=EPS))
    assert close(paper["language.0.down_proj"], [1.08216, 4.0], rtol=1e-5) and close(paper["vision.0.fc2"], [1.08216, 4.0], rtol=1e-5)
    ref = score_neurons(stats, ManuConfig(formulation="reference", epsilon=EPS))
    assert close(ref["language.0.down_proj"], reference_score(hand[("forget", "text_only")],
                                                              hand[("retain", "text_only")], eps=EPS))
    assert close(ref["vision.0.fc2"], reference_score(hand[("forget", "image_text")],
                                                      hand[("retain", "image_text")], eps=EPS))
    only_language = score_neurons(stats, ManuConfig(towers=("language",)))
    assert list(only_language) == ["language.0.down_proj"]
    per = score_per_rendering(stats, ManuConfig(formulation="reference", epsilon=EPS))
    assert set(per) == {"image_text", "text_only"}
    # A site that saw no token in a rendering (vision on text-only inputs) is not ranked there.
    stats[("forget", "text_only")] = {**stats[("forget", "text_only")], "vision.0.fc2": NeuronStats.zeros(2, TAU)}
    assert "vision.0.fc2" not in score_per_rendering(stats, ManuConfig())["text_only"]
    with pytest.raises(ValueError, match="missing"):
        score_neurons({k: v for k, v in stats.items() if k[1] == "text_only"}, ManuConfig(formulation="paper"))


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
    chosen = select(stats, ManuConfig(alpha=50, selection="combined", epsilon=EPS))
    # Both sites have scores (1.08, 4): global 50 % of 4 neurons = the two 4.0s.
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
        for field in ("sum_abs", "sum", "sum_sq"):
            assert close(getattr(merged, field), getattr(whole, field), rtol=1e-5, atol=1e-4)
