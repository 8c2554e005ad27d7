"""Every row of the error catalogue (book/errors.md) is triggered for real and must match what the page says."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch

from manu_lite import artifacts, bench, config, finetune, hooks, models, prune, stats

from bench_rows import eval_row, train_row, write_raw

CATALOGUE = Path(__file__).resolve().parents[1] / "book" / "errors.md"


def catalogue_rows() -> list[tuple[str, str, str]]:
    """(id, exception, message excerpt) of each row whose exception is not '(none)'."""
    rows = []
    for line in CATALOGUE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("id", "---") and cells[2] != "(none)":
            rows.append((cells[0], cells[2].strip("`"), cells[3].strip("`")))
    return rows


def catalogue_fixes() -> dict[str, str]:
    """The 'fix' cell of every row, by id (rows without an exception included)."""
    fixes = {}
    for line in CATALOGUE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("id", "---"):
            fixes[cells[0]] = cells[4]
    return fixes


# "Names a fix": some clause starts with an imperative verb and names something concrete to do it with — a
# setting, function, flag, path, file, quoted value or identifier. A symptom ("the split is empty"), a rule
# ("every row needs an image", "it must be a JSON list") or a bare verb ("fix it") is not a fix.
FIX_VERBS = ("use|choose|pass|set|rerun|re-run|fix|check|delete|download|regenerate|re-download|re-export|rename|"
             "register|shorten|compute|store|add|load|install|call|replace|remove|convert|lower|give")
FIX_CLAUSE = re.compile(r"(?:^|[;:(\n]|[.?!]\s|,\s*(?:or|and|then)?\s*|\s(?:or|either|then)\s)\s*"
                        rf"(?:{FIX_VERBS})\b", re.IGNORECASE)
CONCRETE = re.compile(r"`[^`]+`"                                   # a literal in the catalogue's backticks
                      r"|\b[A-Za-z_][\w.]*\("                       # a function call
                      r"|\b[\w.]+=\S"                               # a keyword argument or setting
                      r"|--[a-z][\w-]*"                             # a command-line flag
                      r"|\S/\S"                                     # a path (or a choice like PNG/JPEG)
                      r"|'[^']+'"                                   # a quoted value
                      r"|\S\*|\*\S"                                 # a glob
                      r"|\b\w+\.(?:json|tmp|parquet|py|ipynb|md|safetensors)\b"  # a file name
                      r"|\b[A-Za-z]+_\w+\b"                         # a snake_case field, config or function
                      r"|\b[a-z]+[A-Z]\w*\b|\b[A-Z][a-z]+[A-Z]\w*\b")  # a camelCase or CamelCase name


def names_a_fix(text: str) -> bool:
    """Whether ``text`` has a clause (up to ``;``, a sentence end or a line end not after ``:``) that starts with an
    imperative from ``FIX_VERBS`` and holds something ``CONCRETE``."""
    text = re.sub(r"\b(e\.g|i\.e)\.", r"\1", text)  # "e.g." ends no sentence
    for match in FIX_CLAUSE.finditer(text):
        clause = re.split(r";|(?<!:)\n|[.?!]\s", text[match.start():].lstrip(";:(\n,. "), maxsplit=1)[0]
        if CONCRETE.search(clause):
            return True
    return False


@pytest.fixture(scope="module")
def tiny():
    return models.build_tiny(["USER: <image>\nWho is this person?\nASSISTANT: Ann Lee."] * 10)


def _load_bad_row(tmp_path, change):
    row = eval_row()
    change(row)
    write_raw(tmp_path, "Full_Set", [row])
    bench.load_bench(str(tmp_path), "Full_Set")


def _nan_stats(tiny):
    model, processor, adapter = tiny
    batch = models.encode(processor, adapter, [models.Item("Who?", "text_only", answer="Ann")])
    site = hooks.find_sites(model, ("language",))[0]
    handle = site.out_module.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),))
    try:
        stats.collect_stats(model, [batch], [site], progress=False)
    finally:
        handle.remove()


def _no_image_token():
    from PIL import Image

    tokenizer = models.train_tokenizer(["USER: hello\nASSISTANT: hi"] * 5, 300)
    tokenizer = type(tokenizer)(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(
        tokenizer.backend_tokenizer.to_str().replace('"<image>"', '"<img>"')), unk_token="<unk>", pad_token="<pad>")
    processor = io.StringIO()  # any object: the check fires before the processor is used
    processor.tokenizer = tokenizer
    models.encode_item(processor, models.PromptAdapter(), models.Item("Who?", "image_text", Image.new("RGB", (8, 8))))


def _corrupt(tmp_path):
    run = artifacts.RunManifest(tmp_path, {})
    (tmp_path / "a.json").write_text("1")
    run.complete("step", [tmp_path / "a.json"])
    (tmp_path / "a.json").write_text("2")
    artifacts.RunManifest(tmp_path, {}, resume=True).done("step")


def _corrupt_model_cache(tmp_path, tiny):
    model, processor, _ = tiny
    entry = finetune.save_cached(tmp_path / "tiny-llava-x", model, processor, {})
    (entry / "model.safetensors").write_bytes(b"not the weights")
    finetune.load_cached(entry)


def _resume_other(tmp_path):
    artifacts.RunManifest(tmp_path, {"seed": 0})
    artifacts.RunManifest(tmp_path, {"seed": 1}, resume=True)


def _foreign_mask(tiny):
    model, _, _ = tiny
    site = hooks.find_sites(model, ("language",))[0]
    prune.NeuronMask({site.name: [0]}, meta={"widths": {site.name: site.width * 2}}).check_fits(model)


class _MLP(torch.nn.Module):
    """A two-projection MLP 4 -> 8 -> 4 whose projections are called ``i`` and ``o``."""

    def __init__(self, i="fc1", o="fc2"):
        super().__init__()
        setattr(self, i, torch.nn.Linear(4, 8))
        setattr(self, o, torch.nn.Linear(8, 4))


def _layers(*layers):
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(layers)
    return model


class _Experts(torch.nn.Module):
    """Routed experts with fused parameters, as Llama-4 keeps them: [experts, hidden, 2 x width], ..."""

    def __init__(self):
        super().__init__()
        self.gate_up_proj = torch.nn.Parameter(torch.zeros(3, 4, 16))
        self.down_proj = torch.nn.Parameter(torch.zeros(3, 8, 4))


def _routed_experts():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", hooks.SiteWarning)
        hooks.find_sites(_layers(torch.nn.ModuleDict({"mlp": _MLP(), "experts": _Experts()})), ("language",))


def _temp_names_taken(tmp_path):
    from unittest import mock

    (tmp_path / ".a.json.same.tmp").write_text("someone else's")
    with mock.patch.object(artifacts.secrets, "token_hex", lambda n: "same"):
        artifacts.write_json(tmp_path / "a.json", {})


def _world_without(tmp_path, train_id="018", answer="a", biography="bio", name_pair=True):
    """forget_10 (person '017'), retain_90, Test_Set, Retain_Set and ft_Data with one training row."""
    for c, pid in (("forget_10", "017"), ("retain_90", "018"), ("Test_Set", "017"), ("Retain_Set", "C001")):
        bench.write_split([{**eval_row(pid), "answer": answer, "biography": biography}], bench.EVAL_SCHEMA, tmp_path, c)
    rows = [train_row(pid) for pid in ("017", "018") if pid == train_id or train_id is None]
    if not name_pair:
        rows = [{**r, "metadata": r["metadata"].replace("What is the name", "What is the job")} for r in rows]
    bench.write_split(rows, bench.TRAIN_SCHEMA, tmp_path, "ft_Data")
    return bench.load_world(str(tmp_path), "forget_10")


def _not_parquet(tmp_path):
    (tmp_path / "Full_Set").mkdir()
    (tmp_path / "Full_Set" / "train-00000-of-00001.parquet").write_bytes(b"not parquet")
    bench.load_bench(str(tmp_path), "Full_Set")


def _nameless(tmp_path):
    world = _world_without(tmp_path, None, answer="", biography="born in Riga", name_pair=False)
    bench.qa_pairs(world.forget_train[0], "text_only")


TRIGGERS = {
    "no-such-directory": lambda tmp, tiny: bench.load_bench("/no/such/bench", "Full_Set"),
    "unreadable-parquet": lambda tmp, tiny: _not_parquet(tmp),
    "image-path-missing": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.update(image={"bytes": None,
                                                                                         "path": "017.png"})),
    "duplicate-id": lambda tmp, tiny: (write_raw(tmp, "Full_Set", [eval_row("17"), eval_row("017")]),
                                       bench.load_bench(str(tmp), "Full_Set")),
    "empty-id": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.update(ID="")),
    "not-an-object": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.update(Generation_Task=["x"])),
    "bad-options": lambda tmp, tiny: _load_bad_row(
        tmp, lambda r: r["Classification_Task"]["Image_Textual_Questions"][0].update(
            Options={k: None for k in "ABCD"})),
    "metadata-not-a-list": lambda tmp, tiny: (write_raw(tmp, "ft_Data", [{**train_row(), "metadata": '{"a": 1}'}]),
                                              bench.load_bench(str(tmp), "ft_Data")),
    "missing-training-rows": lambda tmp, tiny: _world_without(tmp, "018"),
    "no-name": lambda tmp, tiny: _nameless(tmp),
    "missing-column": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.pop("Mask_Task")),
    "unknown-columns": lambda tmp, tiny: (write_raw(tmp, "Full_Set", [{"picture": b"", "ID": "1"}]),
                                          bench.load_bench(str(tmp), "Full_Set")),
    "mistyped-field": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.update(Generation_Task="oops")),
    "undecodable-image": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.update(image={"bytes": b"xx", "path": None})),
    "missing-image": lambda tmp, tiny: _load_bad_row(tmp, lambda r: r.update(image=None)),
    "bad-answer-letter": lambda tmp, tiny: _load_bad_row(
        tmp, lambda r: r["Classification_Task"]["Image_Textual_Questions"][0].update(Correct_Answer="E")),
    "bad-metadata": lambda tmp, tiny: (write_raw(tmp, "ft_Data", [{**train_row(), "metadata": "{oops"}]),
                                       bench.load_bench(str(tmp), "ft_Data")),
    "empty-split": lambda tmp, tiny: (write_raw(tmp, "Full_Set", [], bench.EVAL_SCHEMA),
                                      bench.load_bench(str(tmp), "Full_Set")),
    "unknown-config": lambda tmp, tiny: bench.load_bench(str(tmp), "forget_20"),
    "hub-offline": lambda tmp, tiny: bench.load_bench("MLLMMU/MLLMU-Bench", "forget_5"),
    "id-overlap": lambda tmp, tiny: ([bench.write_split([eval_row("007")], bench.EVAL_SCHEMA, tmp, c)
                                      for c in ("forget_10", "retain_90")], bench.load_world(str(tmp), "forget_10")),
    "evaluation-format": lambda tmp, tiny: (bench.write_split([eval_row()], bench.EVAL_SCHEMA, tmp, "forget_5"),
                                            bench.require_training_format(bench.load_bench(str(tmp), "forget_5"),
                                                                         "forget_5")),
    "alpha-zero": lambda tmp, tiny: config.ManuConfig(alpha=0),
    "alpha-too-big": lambda tmp, tiny: config.ManuConfig(alpha=150),
    "negative-tau": lambda tmp, tiny: config.ManuConfig(tau=-0.1),
    "zero-epsilon": lambda tmp, tiny: config.ManuConfig(epsilon=0),
    "unknown-formulation": lambda tmp, tiny: config.ManuConfig(formulation="papr"),
    "unknown-profile": lambda tmp, tiny: config.resolve_profile("laptop"),
    "unknown-prune-mode": lambda tmp, tiny: config.ManuConfig(prune_mode="zero"),
    "foreign-mask": lambda tmp, tiny: _foreign_mask(tiny),
    "no-mlp": lambda tmp, tiny: hooks.find_sites(torch.nn.Sequential(torch.nn.Linear(2, 2))),
    "tower-without-sites": lambda tmp, tiny: hooks.find_sites(tiny[0].model.language_model),
    "layer-without-site": lambda tmp, tiny: hooks.find_sites(_layers(_MLP("fc1", "fc2"), _MLP("w1", "w2")),
                                                             ("language",)),
    "routed-experts": lambda tmp, tiny: _routed_experts(),
    "site-width-mismatch": lambda tmp, tiny: hooks.NeuronSite(tower="language", layer=0, mlp=_MLP(),
                                                              in_projs=("fc1",), out_proj="fc2", width=6),
    "fused-site-rows": lambda tmp, tiny: hooks.NeuronSite(tower="language", layer=0,
                                                          mlp=_MLP("gate_up_proj", "down_proj"),
                                                          in_projs=("gate_up_proj",), out_proj="down_proj", width=8,
                                                          fused=2),
    "context-overflow": lambda tmp, tiny: models.check_context(tiny[0], torch.zeros(1, 300, dtype=torch.long)),
    "no-image-token": lambda tmp, tiny: _no_image_token(),
    "nan-activations": lambda tmp, tiny: _nan_stats(tiny),
    "no-training-items": lambda tmp, tiny: finetune.train(*tiny, [], finetune.TrainConfig(), progress=False),
    "corrupt-artifact": lambda tmp, tiny: _corrupt(tmp),
    "corrupt-model-cache": lambda tmp, tiny: _corrupt_model_cache(tmp, tiny),
    "resume-other-settings": lambda tmp, tiny: _resume_other(tmp),
    "temp-names-taken": lambda tmp, tiny: _temp_names_taken(tmp),
}


def test_catalogue_lists_every_trigger_and_enough_cases():
    ids = [row[0] for row in catalogue_rows()]
    assert sorted(ids) == sorted(TRIGGERS) and len(ids) >= 15


@pytest.mark.parametrize("case, exception, excerpt", catalogue_rows())
def test_documented_error(case, exception, excerpt, tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception) as info:
        TRIGGERS[case](tmp_path, tiny)
    assert type(info.value).__name__ == exception, f"{case}: got {type(info.value).__name__}: {info.value}"
    assert excerpt in str(info.value), f"{case}: {excerpt!r} not in {str(info.value)!r}"
    assert names_a_fix(str(info.value)), f"{case}: the message names no fix: {str(info.value)!r}"


def test_every_catalogue_row_names_a_fix():
    missing = {case: fix for case, fix in catalogue_fixes().items() if not names_a_fix(fix)}
    assert not missing, f"fix cells without an imperative and something concrete: {missing}"


@pytest.mark.parametrize("text", [
    "the split is empty (0 rows)",                                     # a symptom
    "every row needs an image",                                        # a rule (the old check took 'every')
    "it must be a JSON list of {'ID', 'Question', 'Answer'} objects",  # a rule ('must'), quoted but no verb
    "the released code uses 0.1",                                      # 'uses' is not 'use'
    "epsilon=0 must be a finite number > 0 (e.g. 1e-5)",               # an example, no imperative
    "this format needs image, ID, metadata",                           # 'needs'
    "fix the split files",                                             # an imperative with nothing concrete
    "check the inputs of that batch",
])
def test_names_a_fix_rejects_a_sentence_without_one(text):
    assert not names_a_fix(text)


@pytest.mark.parametrize("text", [
    "epsilon=0 must be a finite number > 0; use e.g. epsilon=1e-5",
    "hash mismatch; delete it or rerun without --resume",
    "100 names taken; delete the stale .a.json.*.tmp files there",
    "To fix it, register the MLP layout once:\n  manu_lite.hooks.register_mlp_layout(in_projs=('w1',), out_proj='w2')",
    "unknown formulation 'papr'; choose one of 'paper', 'reference', 'balanced'",
    "choose `tiny`, `colab` or `full`",
])
def test_names_a_fix_accepts_an_imperative_with_something_concrete(text):
    assert names_a_fix(text)
