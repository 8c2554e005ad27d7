"""The assignment checks (manu_lite.checks, manu_lite.checks_extra) pass on the reference solutions and fail, with a
hint, on the stubs; the student notebooks and solution files are derived from the solved ones and up to date.

The stubs and solutions are read from the assignment notebooks themselves (cells tagged ``assignment-stub`` and
``assignment-solution``, the k-th of each belonging to the k-th ``assignment-check``), so the code the book shows is
the code tested here. Every check returns True/False and prints PASS/FAIL lines; it never raises because of the
student's code. Plausible wrong answers are checked too: a check that passed them would teach the wrong thing.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch

from manu_lite import checks, checks_extra
from manu_lite.hooks import find_sites

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted((ROOT / "notebooks" / "assignments").glob("a*.ipynb"))


def tagged(nb, tag: str) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]


def exercises(path: Path) -> list[tuple[str, int]]:
    nb = nbformat.read(path, as_version=4)
    return [(path.stem, k) for k in range(len(tagged(nb, "assignment-check")))]


EXERCISES = [e for path in ASSIGNMENTS for e in exercises(path)]


def namespace() -> dict:
    """What a student's kernel has at an exercise: the checks, torch, the checks' tiny model and its batches."""
    model, batches = checks.tiny_model_and_batches()
    names = {n: getattr(checks, n) for n in checks.__all__} | {n: getattr(checks_extra, n) for n in checks_extra.__all__}
    return {"torch": torch, "model": model, "batches": batches, "find_sites": find_sites, **names}


def run_check(stem: str, k: int, implementation_tag: str) -> bool:
    """Exec the solutions of exercises before ``k``, then exercise ``k``'s stub or solution, then evaluate its check
    cell (one expression)."""
    nb = nbformat.read(ROOT / "notebooks" / "assignments" / f"{stem}.ipynb", as_version=4)
    env = namespace()
    for source in tagged(nb, "assignment-solution")[:k]:
        exec(compile(source, "<earlier solution>", "exec"), env)
    source = tagged(nb, implementation_tag)[k]
    exec(compile(source, f"<{implementation_tag}>", "exec"), env)
    return eval(compile(tagged(nb, "assignment-check")[k], "<assignment-check>", "eval"), env)


def test_every_assignment_has_three_exercises_each_with_stub_solution_and_check():
    assert len(ASSIGNMENTS) >= 4, [p.name for p in ASSIGNMENTS]
    for path in ASSIGNMENTS:
        nb = nbformat.read(path, as_version=4)
        counts = {tag: len(tagged(nb, tag)) for tag in ("assignment-stub", "assignment-solution", "assignment-check")}
        assert len(set(counts.values())) == 1 and counts["assignment-check"] >= 3, f"{path.name}: {counts}"
        for stub in tagged(nb, "assignment-stub"):
            assert "NotImplementedError" in stub or "= None" in stub, f"{path.name}: a stub that does something"
        for check in tagged(nb, "assignment-check"):
            assert check.strip().startswith("check_") and "\n" not in check.strip(), f"{path.name}: {check!r}"


@pytest.mark.parametrize("stem, k", EXERCISES, ids=lambda v: str(v))
def test_check_passes_on_the_reference_solution(stem, k, capsys):
    assert run_check(stem, k, "assignment-solution") is True
    out = capsys.readouterr().out
    assert "PASS: check_" in out and "FAIL" not in out, out


@pytest.mark.parametrize("stem, k", EXERCISES, ids=lambda v: str(v))
def test_check_fails_on_the_stub_with_a_hint(stem, k, capsys):
    assert run_check(stem, k, "assignment-stub") is False
    out = capsys.readouterr().out
    assert "FAIL: check_" in out and "Hint:" in out, out


def test_student_notebooks_and_solution_files_are_derived_and_up_to_date():
    spec = importlib.util.spec_from_file_location("make_student", ROOT / "notebooks/assignments/make_student.py")
    make_student = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_student)
    assert make_student.main(["--check"]) == 0, "run python notebooks/assignments/make_student.py and commit"
    for path in ASSIGNMENTS:
        student = nbformat.read(make_student.STUDENT / path.name, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        assert not [c for c in student.cells if "assignment-solution" in c.metadata.get("tags", [])]
        assert "{solution-start}" not in text and "solutions.py" in text
        solved = nbformat.read(path, as_version=4)
        for solution in tagged(solved, "assignment-solution"):
            assert solution.strip() not in text, f"{path.name}: a solution leaked into the student version"
        assert len(tagged(student, "assignment-stub")) == len(tagged(solved, "assignment-stub"))


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



# --- the further exercises (manu_lite.checks_extra) -----------------------------------------------------------------
def test_recall_mask_check_rejects_answer_positions_and_padding(capsys):
    assert checks_extra.check_recall_mask(lambda b: b["labels"] != -100) is False
    assert "answer positions themselves" in capsys.readouterr().out

    def no_padding_rule(batch):
        mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
        mask[:, :-1] = batch["labels"][:, 1:] != -100
        return mask | (batch["attention_mask"] == 0)  # padding counted as recall

    _, batches = checks.tiny_model_and_batches()
    if (batches["image_text"]["attention_mask"] == 0).any():
        assert checks_extra.check_recall_mask(no_padding_rule) is False


def test_measured_values_reject_fractions_and_guesses(capsys):
    _, batches = checks.tiny_model_and_batches()
    share = checks_extra.recall_share(batches["image_text"])
    assert checks_extra.check_recall_share(share / 100) is False  # a fraction, not percent
    assert "fraction" in capsys.readouterr().out
    assert checks_extra.check_recall_share(share + 2) is False
    assert checks_extra.check_var_share(100.0) is False and checks_extra.check_var_share(None) is False


def test_paper_score_check_rejects_inverted_ratio_and_totals(capsys):
    from manu_lite.importance import paper_score

    assert checks_extra.check_paper_score(lambda fm, ft, rm, rt, eps: paper_score(rm, rt, fm, ft, eps, reduction="mean")) is False
    assert "numerator" in capsys.readouterr().out
    assert checks_extra.check_paper_score(lambda fm, ft, rm, rt, eps: paper_score(fm, ft, rm, rt, eps)) is False  # sums


def test_output_rows_check_rejects_columns_and_zeroed_count_rejects_forgotten_bias(capsys):
    def columns(site, idx):
        saved = site.out_module.weight[:, idx].clone()
        with torch.no_grad():
            site.out_module.weight[:, idx] = 0

        def restore():
            with torch.no_grad():
                site.out_module.weight[:, idx] = saved
        return restore

    assert checks_extra.check_prune_output_rows(columns) is False
    assert "columns (neurons)" in capsys.readouterr().out

    def no_bias(site, k, mode):  # forgets fc1's bias entries on the vision site
        out = site.out_module
        if mode == "output_rows":
            return k * out.in_features
        return k * (out.out_features + sum(m.in_features for m in site.in_modules))

    assert checks_extra.check_zeroed_entries(no_bias) is False


def test_jaccard_and_best_selection_checks_reject_one_sided_answers():
    def per_index(a, b):  # ignores the site: indices of different layers counted as the same neuron
        sa = {int(i) for v in a.values() for i in v}
        sb = {int(i) for v in b.values() for i in v}
        return len(sa & sb) / len(sa | sb) if sa | sb else 1.0

    def containment(a, b):  # |a ∩ b| / |a|: not symmetric
        sa = {(s, int(i)) for s, v in a.items() for i in v}
        sb = {(s, int(i)) for s, v in b.items() for i in v}
        return len(sa & sb) / len(sa) if sa else 1.0

    assert checks_extra.check_jaccard(per_index) is False
    assert checks_extra.check_jaccard(containment) is False
    assert checks_extra.check_best_selection(lambda d, budget: d["forget"].mean(axis=1).idxmax()) is False
    assert checks_extra.check_best_selection(
        lambda d, budget: d[d["retain"].max(axis=1) <= budget]["forget"]["image_text"].idxmax()) is False
