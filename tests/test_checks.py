"""The assignment checks (manu_lite.checks) pass on the reference solutions and fail, with a hint, on the stubs.

The stubs and solutions are read from the assignment notebooks themselves (cells tagged ``assignment-stub`` and
``assignment-solution``), so the code the book shows is the code tested here. Every check returns True/False and
prints PASS/FAIL lines; it never raises because of the student's code. A few plausible wrong answers are checked too:
a check that passed them would teach the wrong thing.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from manu_lite import checks

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted((ROOT / "notebooks" / "assignments").glob("a*.ipynb"))


def tagged(nb, tag: str) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]


def run_check(nb, implementation_tag: str) -> bool:
    """Exec the notebook's stub or solution cell, then evaluate its check cell (one expression)."""
    namespace = {"torch": torch, **{name: getattr(checks, name) for name in checks.__all__}}
    (source,) = tagged(nb, implementation_tag)
    exec(compile(source, f"<{implementation_tag}>", "exec"), namespace)
    (check,) = tagged(nb, "assignment-check")
    return eval(compile(check, "<assignment-check>", "eval"), namespace)


def test_there_are_four_assignments_each_with_stub_solution_and_check():
    assert len(ASSIGNMENTS) >= 4, [p.name for p in ASSIGNMENTS]
    for path in ASSIGNMENTS:
        nb = nbformat.read(path, as_version=4)
        for tag in ("assignment-stub", "assignment-solution", "assignment-check"):
            assert len(tagged(nb, tag)) == 1, f"{path.name}: expected exactly one cell tagged {tag!r}"
        assert "NotImplementedError" in tagged(nb, "assignment-stub")[0]
        check = tagged(nb, "assignment-check")[0].strip()
        assert check.startswith("check_") and "\n" not in check, f"{path.name}: the check cell is one call"


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_check_passes_on_the_reference_solution(path, capsys):
    nb = nbformat.read(path, as_version=4)
    assert run_check(nb, "assignment-solution") is True
    out = capsys.readouterr().out
    assert "PASS: check_" in out and "FAIL" not in out, out


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_check_fails_on_the_stub_with_a_hint(path, capsys):
    nb = nbformat.read(path, as_version=4)
    assert run_check(nb, "assignment-stub") is False
    out = capsys.readouterr().out
    assert "FAIL: check_" in out and "not implemented yet" in out and "Hint:" in out, out


# --- plausible wrong answers --------------------------------------------------------------------------------------
def _record_without_finally(model, site, batch):
    seen = []
    handle = site.out_module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    model(**{k: v for k, v in batch.items() if k != "labels"})
    handle.remove()
    return seen[0]


def _record_output_of_down_proj(model, site, batch):
    seen = []
    handle = site.out_module.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    try:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("wrong, hint", [
    (_record_without_finally, "finally"),
    (_record_output_of_down_proj, "args[0]"),
])
def test_recording_check_rejects_wrong_answers(wrong, hint, capsys):
    assert checks.check_recording_hook(wrong) is False
    assert hint in capsys.readouterr().out


def test_importance_check_rejects_totals_and_unnormalised_contrasts(capsys):
    def i_abs(m, t, eps):
        return (m.mean_abs - t.mean_abs).abs()  # not normalised

    def i_freq(m, t, eps):  # totals instead of per-token shares
        return (m.count_above - t.count_above).abs() / (m.count_above + t.count_above + eps)

    def i_var(m, t, eps):
        return (m.var + t.var).sqrt()

    def i_rms(m, t, eps):  # no eps: NaN for the silent neuron
        return ((m.mean_sq - t.mean_sq).abs() / (m.mean_sq + t.mean_sq)).sqrt()

    assert checks.check_importance_functions(i_abs, i_freq, i_var, i_rms) is False
    out = capsys.readouterr().out
    assert "PASS  I_var" in out
    for key in ("abs", "freq", "rms"):
        assert f"FAIL  I_{key}" in out


def test_pruning_check_rejects_output_rows_and_missing_restore(capsys):
    def output_rows(site, idx):  # the released code's edit: rows of down_proj, i.e. residual channels
        with torch.no_grad():
            site.out_module.weight[idx % site.out_module.weight.shape[0], :] = 0
        return lambda: None

    def columns_only(site, idx):  # writes nothing, but restore forgets what it zeroed
        with torch.no_grad():
            site.out_module.weight[:, idx] = 0
        return lambda: None

    assert checks.check_prune_neurons(output_rows) is False
    assert checks.check_prune_neurons(columns_only) is False
    out = capsys.readouterr().out
    assert "restore() is bit-exact" in out and "Hint:" in out
    # The model the checks share must be left as it was, whatever the student's code did.
    model, batches = checks.tiny_model_and_batches()
    fresh = checks._tiny.__wrapped__()[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_own_score_check_rejects_plain_magnitude_and_nan(capsys):
    assert checks.check_own_score(lambda f, r: f.mean_abs.clone()) is False  # also picks loud-everywhere neurons
    assert checks.check_own_score(lambda f, r: f.rms / r.rms) is False       # 0/0 for the silent neuron
    out = capsys.readouterr().out
    assert "busy on forget AND retain" in out or "planted" in out
    assert "NaN/Inf" in out


def test_own_score_check_accepts_the_published_per_rendering_scores():
    from manu_lite.importance import balanced_rendering_score, reference_score

    assert checks.check_own_score(lambda f, r: reference_score(f, r)) is True
    assert checks.check_own_score(lambda f, r: balanced_rendering_score(f, r)) is True

