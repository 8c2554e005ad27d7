"""Scores and selection pinned where the importance tests did not reach (issue 19, mutation survivors): the paper
score's per-token reading (``reduction="mean"``) for both datasets against plain formulas on the activations,
select_threshold's alpha bounds, and the selection summary's fields."""
from __future__ import annotations

import pytest
import torch

from manu_lite.importance import paper_score, select_threshold, select_union, selection_summary
from manu_lite.stats import NeuronStats

TAU, EPS = 0.5, 1e-5


def _importance_by_hand(multi: torch.Tensor, text: torch.Tensor, reduction: str) -> torch.Tensor:
    """I(D) = I_abs + I_freq + I_var + I_rms from activations [tokens, width], float64, as the paper writes them;
    ``"mean"`` divides N and Z² by each rendering's token count."""
    m, t = multi.double(), text.double()
    scale_m, scale_t = (len(m), len(t)) if reduction == "mean" else (1, 1)
    z_m, z_t = m.abs().mean(0), t.abs().mean(0)
    n_m, n_t = (m.abs() > TAU).sum(0) / scale_m, (t.abs() > TAU).sum(0) / scale_t
    q_m, q_t = (m * m).sum(0) / scale_m, (t * t).sum(0) / scale_t
    return ((z_m - z_t).abs() / (z_m + z_t + EPS) + (n_m - n_t).abs() / (n_m + n_t + EPS)
            + (m.var(0, unbiased=False) + t.var(0, unbiased=False)).sqrt()
            + ((q_m - q_t).abs() / (q_m + q_t + EPS)).sqrt())


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_paper_score_reduction_applies_to_forget_and_retain(reduction):
    g = torch.Generator().manual_seed(5)
    # token counts differ per rendering and per dataset, so "sum" and "mean" disagree on both datasets
    acts = {key: torch.randn(n, 3, generator=g) * s for key, n, s in
            (("fm", 7, 1.0), ("ft", 3, 0.6), ("rm", 11, 0.8), ("rt", 2, 1.3))}
    stats = {k: NeuronStats.from_activations(v, TAU) for k, v in acts.items()}
    got = paper_score(stats["fm"], stats["ft"], stats["rm"], stats["rt"], eps=EPS, reduction=reduction)
    want = (_importance_by_hand(acts["fm"], acts["ft"], reduction)
            / (_importance_by_hand(acts["rm"], acts["rt"], reduction) + EPS))
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
    other = paper_score(stats["fm"], stats["ft"], stats["rm"], stats["rt"], eps=EPS,
                        reduction="mean" if reduction == "sum" else "sum")
    assert not torch.allclose(got, other)  # the two readings differ on this data


def test_select_threshold_alpha_bounds():
    scores = {"language.0.down_proj": torch.arange(100, dtype=torch.float32)}
    assert select_threshold(scores, 1)["language.0.down_proj"].tolist() == [99]  # k = int(1/100 * 100) = 1
    assert len(select_threshold(scores, 100)["language.0.down_proj"]) == 100
    for alpha in (0, 100.5):
        with pytest.raises(ValueError, match=rf"^alpha={alpha!r} must be a percentage in \(0, 100\]$"):
            select_threshold(scores, alpha)


def test_select_union_without_rankings_says_so():
    with pytest.raises(ValueError, match="^no rankings to select from$"):
        select_union([], 10)


def test_selection_summary_fields_by_hand():
    indices = {"language.0.down_proj": torch.tensor([1, 2]), "vision.0.fc2": torch.tensor([0])}
    summary = selection_summary(indices, {"language.0.down_proj": 8, "vision.0.fc2": 4})
    assert summary == {"selected": 3, "of": 12, "fraction": 0.25,
                       "per_tower": {"language": {"selected": 2, "of": 8}, "vision": {"selected": 1, "of": 4}},
                       "per_site": {"language.0.down_proj": {"selected": 2, "of": 8},
                                    "vision.0.fc2": {"selected": 1, "of": 4}}}
    unknown = selection_summary({"language.0.down_proj": torch.tensor([1])}, {"language.0.down_proj": 0})
    assert (unknown["of"], unknown["fraction"]) == (0, 0.0)  # widths unknown: no fraction, no division by zero


def test_score_per_rendering_ranks_a_site_seen_on_one_token_and_leaves_out_one_never_seen():
    from manu_lite.config import ManuConfig
    from manu_lite.importance import balanced_rendering_score, score_per_rendering

    g = torch.Generator().manual_seed(3)

    def acts(n):
        return NeuronStats.from_activations(torch.randn(n, 4, generator=g), TAU)

    # language.0: one retain token, one forget token (the least that counts); language.1: no retain token at all
    forget = {"language.0.fc2": acts(1), "language.1.fc2": acts(5)}
    retain = {"language.0.fc2": acts(1), "language.1.fc2": NeuronStats.zeros(4, TAU)}
    stats = {("forget", "text_only"): forget, ("retain", "text_only"): retain}
    ranking = score_per_rendering(stats, ManuConfig(formulation="balanced", epsilon=EPS))
    assert list(ranking) == ["text_only"] and list(ranking["text_only"]) == ["language.0.fc2"]
    want = balanced_rendering_score(forget["language.0.fc2"], retain["language.0.fc2"], eps=EPS)
    assert torch.equal(ranking["text_only"]["language.0.fc2"], want)
    # the same with the roles swapped: a forget site of no token is left out, one of one token is ranked
    swapped = {("forget", "text_only"): {"language.0.fc2": acts(1), "language.1.fc2": NeuronStats.zeros(4, TAU)},
               ("retain", "text_only"): {"language.0.fc2": acts(1), "language.1.fc2": acts(3)}}
    assert list(score_per_rendering(swapped, ManuConfig(formulation="balanced"))["text_only"]) == ["language.0.fc2"]


def test_the_two_refusals_say_exactly_what_to_do():
    from manu_lite import importance
    from manu_lite.config import ManuConfig

    with pytest.raises(ValueError, match=r"^paper_vision='exclude' leaves no candidate: towers are only vision; score "
                                         r"the language tower or use paper_vision='as_written'$"):
        importance._paper_candidates({("forget", "image_text"): {"vision.0.fc2": NeuronStats.zeros(2, 0.1)}},
                                     ManuConfig(formulation="paper", towers=("vision",), paper_vision="exclude"))
    with pytest.raises(ValueError, match=r"^emulate_released_defects=True scores projection outputs "
                                         r"\(manu_lite.released\), not these neuron statistics; run manu_unlearn\("
                                         r"model, processor, forget, retain, config\), which collects them$"):
        importance.select_reference({}, ManuConfig(formulation="reference", emulate_released_defects=True))
