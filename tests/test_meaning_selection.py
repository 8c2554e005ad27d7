"""Scores and selections pinned to their meaning (issue 19): each test fails on a named one-line bug.

Statistics are built from hand-written activations (``NeuronStats.from_activations``), and expected values are
computed here from the formulas, or from the named public function of each formulation
(:mod:`manu_lite.importance`), never from the code path under test alone.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from manu_lite.config import ManuConfig
from manu_lite.importance import (balanced_rendering_score, n_selected, paper_components, paper_score,
                                  reference_score, score_neurons, score_per_rendering, select, select_union)
from manu_lite.stats import NeuronStats

D = torch.float64


def _stats(rows, tau=0.1):
    return NeuronStats.from_activations(torch.tensor(rows, dtype=D), tau)


# ------------------------------------------------------------------------------------------- count_above, tau
def test_count_above_is_strictly_greater_than_tau():
    # |a| exactly tau (0.5 and -0.5) is not counted; 0.6 and -0.7 are.
    s = _stats([[0.5], [-0.5], [0.6], [-0.7], [0.4]], tau=0.5)
    assert s.count_above.tolist() == [2.0]
    assert s.freq.tolist() == [pytest.approx(2 / 5)]


def test_count_above_at_tau_zero_skips_exact_zeros():
    s = _stats([[0.0, 1.0], [0.0, -2.0], [0.0, 0.0], [1e-12, 3.0]], tau=0.0)
    assert s.count_above.tolist() == [1.0, 3.0]


# ------------------------------------------------------------------------------------------- epsilon placement
def _pair(forget_multi, forget_text, retain_multi, retain_text, tau=0.1):
    return tuple(_stats(r, tau) for r in (forget_multi, forget_text, retain_multi, retain_text))


def test_paper_score_eps_sits_in_the_denominator_with_zero_retain_importance():
    # Retain: both renderings identical constants -> every I_k(D_r) = 0 (var = 0, and equal |a| and sums).
    # Forget neuron 0 differs between renderings; neuron 1 is 0 everywhere (0/0 contrasts).
    fm, ft = [[1.0, 0.0], [3.0, 0.0]], [[0.5, 0.0], [0.5, 0.0]]
    rm, rt = [[2.0, 0.0], [2.0, 0.0]], [[2.0, 0.0], [2.0, 0.0]]
    eps = 0.25
    stats = _pair(fm, ft, rm, rt, tau=1.0)
    score = paper_score(*stats, eps=eps)
    # Hand: forget neuron 0: Z̄_m = 2, Z̄_t = 0.5; N_m = 1 (3.0 > τ = 1; 1.0 is not), N_t = 0;
    # Var_m = 1, Var_t = 0; Z²_m = 1 + 9 = 10, Z²_t = 0.5.
    i_abs = 1.5 / (2.5 + eps)
    i_freq = 1 / (1 + eps)
    i_var = math.sqrt(1.0)
    i_rms = math.sqrt(9.5 / (10.5 + eps))
    i_f = i_abs + i_freq + i_var + i_rms
    assert score[0].item() == pytest.approx(i_f / (0 + eps), rel=1e-9)
    # Neuron 1: every contrast 0/(0 + ε) = 0, so S = 0/(0 + ε) = 0 — finite, not NaN.
    assert score[1].item() == 0.0
    assert torch.isfinite(score).all()


def test_paper_components_0_over_0_and_eps_in_each_denominator():
    eps = 0.5
    multi, text = _stats([[0.0, 2.0], [0.0, 2.0]], tau=1.0), _stats([[0.0, 1.0], [0.0, 1.0]], tau=1.0)
    c = paper_components(multi, text, eps=eps)
    assert [c[k][0].item() for k in ("abs", "freq", "var", "rms")] == [0.0, 0.0, 0.0, 0.0]
    assert c["abs"][1].item() == pytest.approx(1.0 / (3.0 + eps))
    assert c["freq"][1].item() == pytest.approx(2.0 / (2.0 + eps))      # N_m = 2, N_t = 0 (1.0 is not > τ)
    assert c["rms"][1].item() == pytest.approx(math.sqrt(6.0 / (10.0 + eps)))  # Z² sums 8 and 2


def test_balanced_and_reference_eps_in_the_denominator():
    eps = 0.5
    forget, retain = _stats([[1.0], [3.0]], tau=1.0), _stats([[0.0], [0.0]], tau=1.0)
    # balanced: (mean|a| 2 + freq 0.5 + std 1 + rms sqrt(5)) / (0 + ε)
    assert balanced_rendering_score(forget, retain, eps=eps).item() == pytest.approx(
        (2 + 0.5 + 1 + math.sqrt(5)) / eps)
    # reference: 2(2/ε − 1) + 0 + 2(std_unbiased/ε − 1) + 2(sqrt 5/ε − 1), std_unbiased = sqrt 2
    expected = 2 * (2 / eps - 1) + 2 * (math.sqrt(2) / eps - 1) + 2 * (math.sqrt(5) / eps - 1)
    assert reference_score(forget, retain, eps=eps).item() == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- per formulation
SITES = ("vision.0.fc2", "vision.1.fc2", "language.0.down_proj", "language.1.down_proj")


def _world_stats(seed=0, width=6):
    """{(dataset, rendering): {site: NeuronStats}}; vision sites see no text-only token, as in a real pass."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d_i, dataset in enumerate(("forget", "retain")):
        for rendering in ("image_text", "text_only"):
            table = {}
            for s_i, site in enumerate(SITES):
                n = 0 if (rendering == "text_only" and site.startswith("vision")) else 7 + s_i + d_i
                scale = 1.0 + 0.3 * s_i + 0.5 * d_i + (0.4 if rendering == "text_only" else 0)
                table[site] = NeuronStats.from_activations(
                    scale * torch.randn(n, width, generator=g, dtype=D), 0.5) if n else NeuronStats.zeros(width, 0.5)
            out[(dataset, rendering)] = table
    return out


def test_scores_equal_the_named_function_per_formulation():
    stats = _world_stats()
    t = lambda d, r, s: stats[(d, r)][s]  # noqa: E731
    eps = 1e-3
    paper = score_neurons(stats, ManuConfig(formulation="paper", epsilon=eps))
    assert set(paper) == set(SITES)
    for s in SITES:
        expected = paper_score(t("forget", "image_text", s), t("forget", "text_only", s),
                               t("retain", "image_text", s), t("retain", "text_only", s), eps=eps)
        assert torch.allclose(paper[s], expected, rtol=1e-12, atol=0)
    reference = score_neurons(stats, ManuConfig(formulation="reference", epsilon=eps))
    for s in SITES:
        r = "image_text" if s.startswith("vision") else "text_only"
        expected = reference_score(t("forget", r, s), t("retain", r, s), eps=eps)
        assert torch.allclose(reference[s], expected, rtol=1e-12, atol=0)
    balanced = score_per_rendering(stats, ManuConfig(formulation="balanced", epsilon=eps))
    assert set(balanced) == {"image_text", "text_only"}
    assert set(balanced["image_text"]) == set(SITES)
    assert set(balanced["text_only"]) == {s for s in SITES if s.startswith("language")}
    for r, ranking in balanced.items():
        for s, score in ranking.items():
            expected = balanced_rendering_score(t("forget", r, s), t("retain", r, s), eps=eps)
            assert torch.allclose(score, expected, rtol=1e-12, atol=0)
            assert not torch.allclose(score, reference_score(t("forget", r, s), t("retain", r, s), eps=eps))
    # The three formulations really differ on these statistics (so a swap cannot pass).
    s = "language.1.down_proj"
    assert not torch.allclose(paper[s], reference[s])
    assert not torch.allclose(reference[s], balanced["text_only"][s])


# ------------------------------------------------------------------------------------------- union with a scope
def _lopsided_rankings():
    """Language scores all above vision scores, so a global top-k takes language only."""
    v = {"vision.0.fc2": torch.arange(10, dtype=D) / 100}
    lang = {"language.0.down_proj": 10 + torch.arange(10, dtype=D)}
    return [{**v, **lang}, {**{k: x.flip(0) for k, x in v.items()}, **{k: x.flip(0) for k, x in lang.items()}}]


def test_select_union_with_tower_scope_selects_per_tower():
    chosen = select_union(_lopsided_rankings(), alpha=20, scope="tower")
    assert len(chosen["vision.0.fc2"]) == n_selected(20, 10) == 2
    assert len(chosen["language.0.down_proj"]) == 2
    # Interleaved: top of ranking 1 (index 9) then top of ranking 2 (index 0), per tower.
    assert chosen["vision.0.fc2"].tolist() == [0, 9]
    assert chosen["language.0.down_proj"].tolist() == [0, 9]
    glob = select_union(_lopsided_rankings(), alpha=20, scope="global")
    assert len(glob["vision.0.fc2"]) == 0 and len(glob["language.0.down_proj"]) == 4


def test_select_balanced_honours_config_scope():
    # Vision neurons are nearly indistinguishable between forget and retain; language neurons of the forget set
    # are 10x larger: a global top-k takes language only, a per-tower one takes alpha % of each tower.
    g = torch.Generator().manual_seed(1)
    width = 10
    stats = {}
    for dataset in ("forget", "retain"):
        for rendering in ("image_text", "text_only"):
            big = 10.0 if dataset == "forget" else 1.0
            stats[(dataset, rendering)] = {
                "vision.0.fc2": (NeuronStats.from_activations(torch.randn(8, width, generator=g, dtype=D), 0.5)
                                 if rendering == "image_text" else NeuronStats.zeros(width, 0.5)),
                "language.0.down_proj": NeuronStats.from_activations(
                    big * torch.randn(8, width, generator=g, dtype=D), 0.5),
            }
    per_tower = select(stats, ManuConfig(formulation="balanced", alpha=20, scope="tower"))
    assert len(per_tower["vision.0.fc2"]) == 2 and len(per_tower["language.0.down_proj"]) == 2
    glob = select(stats, ManuConfig(formulation="balanced", alpha=20, scope="global"))
    assert len(glob["vision.0.fc2"]) == 0 and len(glob["language.0.down_proj"]) == 4


# ------------------------------------------------------------------------------------------- the MANU report
def test_report_token_counts_are_the_recall_and_all_counts_by_hand(small_world, small_vanilla):
    from manu_lite.finetune import training_items
    from manu_lite.manu import manu_unlearn
    from manu_lite.models import encode_item

    vanilla, processor, adapter = small_vanilla
    forget, retain = small_world.forget_train[:2], small_world.retain_train[:2]
    expected = {}
    for dataset, records in (("forget", forget), ("retain", retain)):
        for rendering in ("image_text", "text_only"):
            recall = every = 0
            for item in training_items(records, (rendering,)):
                enc = encode_item(processor, adapter, item)
                labels = torch.as_tensor(enc["labels"]).reshape(-1)
                # Recall positions: t with labels[t+1] an answer token (never padding: one item, no padding).
                recall += int((labels[1:] != -100).sum())
                every += labels.numel()
            expected[f"{dataset}/{rendering}"] = (recall, every)
    model = copy.deepcopy(vanilla)
    _, report = manu_unlearn(model, processor, forget, retain, ManuConfig(alpha=5, positions="recall"),
                             adapter=adapter, batch_size=3, progress=False)
    assert report.tokens == {k: v[0] for k, v in expected.items()}
    _, report = manu_unlearn(model, processor, forget, retain, ManuConfig(alpha=5, positions="all"),
                             adapter=adapter, batch_size=3, progress=False)
    assert report.tokens == {k: v[1] for k, v in expected.items()}


# ------------------------------------------------------------------------------------------- streamed totals
def test_streamed_updates_equal_one_pass_formulas_for_every_statistic():
    """Batches of 1, 3 and 5 rows, float32 (mean 1000x the spread) and bfloat16 input, against float64 formulas
    on all rows at once: merging (Chan's update, the running sums) must not depend on how tokens are batched."""
    g = torch.Generator().manual_seed(11)
    rows32 = (1000.0 + 1e-2 * torch.randn(9, 3, generator=g)).float()
    rows16 = torch.randn(4, 3, generator=g).to(torch.bfloat16)
    tau = 999.999
    s = NeuronStats.zeros(3, tau)
    for chunk in (rows32[:1], rows32[1:4], rows32[4:9]):
        s.update_(chunk)
    a = rows32.double()
    mean = a.mean(0)
    assert s.count.item() == 9
    assert torch.allclose(s.sum, a.sum(0), rtol=1e-12)
    assert torch.allclose(s.sum_abs, a.abs().sum(0), rtol=1e-12)
    assert torch.allclose(s.sum_sq, (a * a).sum(0), rtol=1e-6)  # squares are taken in the input dtype
    assert torch.allclose(s.m2, ((a - mean) ** 2).sum(0), rtol=1e-6)
    assert torch.equal(s.count_above, (a.abs() > tau).sum(0).double())
    assert torch.allclose(s.std, a.std(0, unbiased=False), rtol=1e-6)
    assert torch.allclose(s.std_unbiased, a.std(0, unbiased=True), rtol=1e-6)
    b = NeuronStats.zeros(3, 0.5)
    b.update_(rows16[:2]).update_(rows16[2:])
    h = rows16.double()
    assert b.count.item() == 4 and b.sum.dtype == torch.float64
    assert torch.allclose(b.sum, h.sum(0), rtol=1e-9) and torch.allclose(b.m2, ((h - h.mean(0)) ** 2).sum(0), rtol=1e-6)
    assert torch.equal(b.count_above, (h.abs() > 0.5).sum(0).double())
    merged = NeuronStats.from_activations(rows32[:4], tau) + NeuronStats.from_activations(rows32[4:], tau)
    for name in ("count", "sum", "sum_abs", "sum_sq", "count_above"):
        assert torch.allclose(getattr(merged, name), getattr(s, name), rtol=1e-12), name
    assert torch.allclose(merged.m2, s.m2, rtol=1e-6)
