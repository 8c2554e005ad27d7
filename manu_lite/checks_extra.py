"""The assignments' further graded exercises (exercises 2 and 3 of A1–A4), in the style of :mod:`manu_lite.checks`.

Each check prints one ``PASS``/``FAIL`` line per part, with a hint on failure, returns ``True``/``False`` and never
raises because of the student's code. Exercise 3 of every assignment asks for a *measured* conclusion: a number or a
choice that the student computes on data and the check recomputes independently, so that it cannot be guessed.

=====================================  ===============================================================
check                                  what is checked
=====================================  ===============================================================
:func:`check_recall_mask`              ``fn(batch) -> Bool[B, T]``: the recall positions (next token is
                                       an answer token, padding excluded), both renderings
:func:`check_recall_share`             the measured share (%) of the image+text batch's non-padding
                                       positions that are recall positions
:func:`check_paper_score`              ``fn(f_multi, f_text, r_multi, r_text, eps) -> S_n`` (per token)
:func:`check_var_share`                the measured share (%) of the top-10 % neurons by S_n that are also
                                       top-10 % by I_var alone, on :func:`importance_playground`
:func:`check_prune_output_rows`        ``fn(site, indices) -> restore``: the released code's edit (rows of
                                       down_proj/fc2), bit-exact restore
:func:`check_zeroed_entries`           ``fn(site, k, mode) -> int``: weight and bias entries one edit
                                       zeroes, for neuron removal and for output rows
:func:`check_jaccard`                  ``fn(a, b) -> float``: overlap of two selections (site → indices)
:func:`check_best_selection`           ``fn(drops, budget) -> label``: the selection that forgets most in
                                       *both* renderings within a retain budget
=====================================  ===============================================================
"""
from __future__ import annotations

from typing import Callable

import torch

from .checks import Report, random_stats, tiny_model_and_batches
from .hooks import find_sites, token_mask_from_batch
from .importance import paper_components, paper_score

__all__ = ["check_recall_mask", "check_recall_share", "check_paper_score", "check_var_share",
           "check_prune_output_rows", "check_zeroed_entries", "check_jaccard", "check_best_selection",
           "importance_playground", "recall_share", "example_drops"]


# ----------------------------------------------------------------------------------------- assignment 1
def check_recall_mask(fn: Callable[[dict], torch.Tensor]) -> bool:
    """Check ``fn(batch) -> Bool[B, T]``: ``True`` at positions whose *next* token is an answer token."""
    report = Report("check_recall_mask")
    _, batches = tiny_model_and_batches()
    for rendering, batch in batches.items():
        def test(batch=batch):
            got = fn(batch)
            want = token_mask_from_batch(batch, "recall")
            assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}, expected a torch.Tensor"
            assert tuple(got.shape) == tuple(want.shape), (
                f"shape {tuple(got.shape)}, expected {tuple(want.shape)} (one flag per input position)")
            got = got.bool()
            answer = batch["labels"] != -100
            if torch.equal(got, answer):
                raise AssertionError("these are the answer positions themselves; the recall position is the one "
                                     "*before* each answer token (its prediction is the answer token)")
            assert torch.equal(got, want), f"{int((got != want).sum())} positions differ from the recall positions"
        report.part(f"{rendering} batch", test,
                    "shift the labels left: mask[:, t] = labels[:, t + 1] != -100, the last position False, and "
                    "never a padding position (attention_mask == 0)")
    return report.done()


def recall_share(batch: dict) -> float:
    """% of a batch's non-padding positions that are recall positions."""
    recall = token_mask_from_batch(batch, "recall")
    real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(recall)
    return 100.0 * float(recall.sum()) / float(real.sum())


def check_recall_share(value: float) -> bool:
    """Check the measured share (%) of the image+text batch's non-padding positions that are recall positions."""
    report = Report("check_recall_share")
    _, batches = tiny_model_and_batches()
    want = recall_share(batches["image_text"])

    def test():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"got {type(value).__name__}, expected a number in percent")
        if 0 < value <= 1 and want > 1:
            raise AssertionError(f"{value:.3f} looks like a fraction; give the share in percent")
        assert abs(value - want) < 0.5, f"{value:.1f} %, but the batch says otherwise (off by more than 0.5 points)"
    report.part("share of recall positions, image+text batch", test,
                "count your recall mask's True entries and divide by the number of non-padding positions "
                "(attention_mask.sum()), image-patch tokens included; times 100")
    return report.done()


# ----------------------------------------------------------------------------------------- assignment 2
def check_paper_score(fn: Callable) -> bool:
    """Check ``fn(forget_multi, forget_text, retain_multi, retain_text, eps) -> Tensor[width]``: the paper's
    S_n = I(D_f) / (I(D_r) + eps), with the per-token reading of N and Z² (as in exercise 1)."""
    report = Report("check_paper_score")
    (f_m, f_t), (r_m, r_t) = random_stats(3), random_stats(4)

    def test():
        for eps in (1e-5, 0.5):
            want = paper_score(f_m, f_t, r_m, r_t, eps=eps, reduction="mean")
            got = fn(f_m, f_t, r_m, r_t, eps)
            assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}, expected a Tensor"
            assert tuple(got.shape) == (f_m.width,), f"shape {tuple(got.shape)}, expected ({f_m.width},)"
            assert torch.isfinite(got).all(), "NaN/Inf: neuron 0 is silent everywhere; eps keeps the ratio finite"
            inverted = paper_score(r_m, r_t, f_m, f_t, eps=eps, reduction="mean")
            if torch.allclose(got.double(), inverted, rtol=1e-6):
                raise AssertionError("this is I(D_r) / I(D_f): the forget set goes in the numerator")
            worst = (got.double() - want).abs().max().item()
            assert worst < 1e-6 * (1 + want.abs().max().item()), f"differs from S_n by up to {worst:.3g} (eps={eps})"
    report.part("S_n on two datasets", test,
                "I(D, n) = I_abs + I_freq + I_var + I_rms of that dataset's two renderings; "
                "S_n = I(D_f, n) / (I(D_r, n) + eps)")
    return report.done()


def importance_playground(seed: int = 5):
    """``(forget_multi, forget_text, retain_multi, retain_text)`` statistics of 64 neurons whose activation scales
    differ by up to 4×: the data of assignment 2's measured exercise."""
    (f_m, f_t), (r_m, r_t) = random_stats(seed), random_stats(seed + 1)
    return f_m, f_t, r_m, r_t


def _var_share(stats, alpha: float = 10.0) -> float:
    f_m, f_t, r_m, r_t = stats
    k = max(1, int(round(alpha / 100 * f_m.width)))
    top_s = set(torch.topk(paper_score(f_m, f_t, r_m, r_t, reduction="mean"), k).indices.tolist())
    i_var = paper_components(f_m, f_t, reduction="mean")["var"] / (paper_components(r_m, r_t, reduction="mean")["var"]
                                                                   + 1e-5)
    top_var = set(torch.topk(i_var, k).indices.tolist())
    return 100.0 * len(top_s & top_var) / k


def check_var_share(value: float) -> bool:
    """Check the measured share (%) of the top-10 % neurons by S_n (on :func:`importance_playground`) that are
    also in the top 10 % by I_var(D_f) / (I_var(D_r) + 1e-5) alone."""
    report = Report("check_var_share")
    want = _var_share(importance_playground())

    def test():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), "expected a number in percent"
        assert abs(value - want) < 0.5, f"{value:.1f} %, but the statistics say otherwise"
    report.part("top-10 % overlap of S_n and the I_var ratio", test,
                "k = round(0.1 · width); take torch.topk of your S_n and of i_var(forget)/(i_var(retain) + 1e-5), "
                "count the shared indices, divide by k, times 100")
    return report.done()


# ----------------------------------------------------------------------------------------- assignment 3
def check_prune_output_rows(fn: Callable) -> bool:
    """Check ``restore = fn(site, indices)``: the released code's edit, rows ``indices`` (and bias entries) of
    ``site.out_module`` zeroed in place, and a ``restore()`` that is bit-exact."""
    from .prune import NeuronMask

    report = Report("check_prune_output_rows")
    model, _ = tiny_model_and_batches()
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    site = next(s for s in find_sites(model) if s.tower == "language")
    idx = torch.tensor([0, 3, 5])

    def test():
        with NeuronMask({site.name: idx}, mode="output_rows").applied(model):
            want = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            restore = fn(site, idx)
            assert callable(restore), f"returned {type(restore).__name__}, expected a function restore()"
            changed = [k for k, v in model.state_dict().items() if not torch.equal(v, want[k])]
            if changed and torch.equal(site.out_module.weight[:, idx], torch.zeros_like(site.out_module.weight[:, idx])):
                raise AssertionError("you zeroed columns (neurons); the released code zeroes rows (output channels)")
            assert not changed, f"{changed[:3]} differ from zeroing exactly those output rows"
            restore()
            changed = [k for k, v in model.state_dict().items() if not torch.equal(v, original[k])]
            assert not changed, f"after restore(), {changed[:3]} are not bit-identical to the original"
        finally:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(original[k])
    report.part("rows of down_proj zeroed, then restored", test,
                "zero site.out_module.weight[idx, :] (and bias[idx] if any) under torch.no_grad(), after saving "
                "exactly those rows")
    return report.done()


def _zeroed(site, k: int, mode: str) -> int:
    out = site.out_module
    if mode == "output_rows":
        return k * (out.weight.shape[1] + (out.bias is not None))
    return k * out.weight.shape[0] + len(site.in_rows(torch.arange(k))) * sum(
        m.weight.shape[1] + (m.bias is not None) for m in site.in_modules)


def check_zeroed_entries(fn: Callable) -> bool:
    """Check ``fn(site, k, mode) -> int``: how many weight and bias entries removing ``k`` neurons
    (``mode="neuron"``) or zeroing ``k`` output rows (``mode="output_rows"``) sets to zero at ``site``."""
    report = Report("check_zeroed_entries")
    model, _ = tiny_model_and_batches()
    sites = {s.tower: s for s in reversed(find_sites(model))}
    for tower, mode in (("language", "neuron"), ("vision", "neuron"), ("language", "output_rows")):
        def test(site=sites[tower], mode=mode):
            got = fn(site, 3, mode)
            want = _zeroed(site, 3, mode)
            assert isinstance(got, int) and not isinstance(got, bool), f"returned {type(got).__name__}, expected int"
            assert got == want, f"{got} entries; removing 3 that way zeroes a different number"
        report.part(f"{tower} site, mode={mode!r}, k=3", test,
                    "a neuron owns one column of out_module (out_features entries) and one row of every in_module "
                    "(in_features entries, + 1 bias entry if it has a bias); an output row has in_features "
                    "entries of out_module (+ its bias entry)")
    return report.done()


# ----------------------------------------------------------------------------------------- assignment 4
def check_jaccard(fn: Callable) -> bool:
    """Check ``fn(a, b) -> float``: |a ∩ b| / |a ∪ b| over (site, neuron) pairs of two selections
    (site → indices); 1.0 when both are empty."""
    report = Report("check_jaccard")
    t = torch.tensor
    cases = [({"x": t([1, 2, 3])}, {"x": t([1, 2, 3])}, 1.0),
             ({"x": t([1, 2])}, {"y": t([1, 2])}, 0.0),  # same indices, different sites: nothing shared
             ({"x": t([1, 2, 3, 4])}, {"x": t([3, 4]), "y": t([0])}, 2 / 5),
             ({"x": t([], dtype=torch.long)}, {"x": t([], dtype=torch.long)}, 1.0)]

    def test():
        for a, b, want in cases:
            got = fn(a, b)
            assert isinstance(got, float), f"returned {type(got).__name__}, expected a float"
            assert abs(got - want) < 1e-9, f"{got:.3f} for {a} vs {b}, expected {want:.3f}"
            assert abs(fn(b, a) - got) < 1e-9, "fn(a, b) != fn(b, a): the overlap must be symmetric"
    report.part("overlap of (site, neuron) pairs", test,
                "build sets of (site, index) pairs, then len(a & b) / len(a | b); both empty: 1.0")
    return report.done()


def example_drops():
    """A drops table like :func:`manu_lite.experiments.compare_selections`'s (points; rows = selections, columns =
    (set, rendering)), built so that each one-sided reading picks a different row."""
    import pandas as pd

    columns = pd.MultiIndex.from_tuples([("forget", "image_text"), ("forget", "text_only"),
                                         ("retain", "image_text"), ("retain", "text_only")], names=["set", "rendering"])
    rows = {"image only": [30.0, 1.0, 2.0, 1.0], "costly": [40.0, 35.0, 25.0, 20.0],
            "balanced": [12.0, 10.0, 3.0, 2.0], "timid": [4.0, 3.0, 0.5, 0.5]}
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def check_best_selection(fn: Callable) -> bool:
    """Check ``fn(drops, budget) -> label | None``: among rows whose retain drops (both renderings) are all
    ≤ ``budget`` points, the one with the largest *smaller* forget drop of the two renderings; None if no row
    fits."""
    report = Report("check_best_selection")
    drops = example_drops()

    def test():
        for budget, want in ((5.0, "balanced"), (30.0, "costly"), (0.1, None)):
            got = fn(drops, budget)
            if budget == 5.0 and got == "image only":
                raise AssertionError("'image only' forgets the portrait route and leaves the name route open: "
                                     "rank by the smaller of the two forget drops")
            if budget == 5.0 and got == "costly":
                raise AssertionError("'costly' is over the retain budget")
            assert got == want, f"budget {budget}: got {got!r}, expected {want!r}"
    report.part("best within the retain budget, in both renderings", test,
                "keep rows with drops['retain'].max(axis=1) <= budget; among them take the argmax of "
                "drops['forget'].min(axis=1); return None when no row is left")
    return report.done()
