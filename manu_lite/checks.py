"""Automatic checks for the assignments (``notebooks/assignments/``), in the style of ARENA's ``tests.check_x(fn)``.

Every check takes the student's function(s), runs in seconds on a CPU (a tiny random-init LLaVA or synthetic
statistics, no trained model and no download), prints one ``PASS``/``FAIL`` line per part with a hint on failure,
and **returns** ``True`` when everything passed, ``False`` otherwise. It never raises because of the student's code:
an exception inside it (``NotImplementedError`` from an untouched stub included) is reported as a failure.

=====================================  ===============================================================
check                                  what is checked
=====================================  ===============================================================
:func:`check_recording_hook`           ``fn(model, site, batch) -> activations`` equals the input of the
                                       site's output projection, in both towers; no hook is left behind,
                                       also when the forward pass raises
:func:`check_importance_functions`     the paper's I_abs, I_freq, I_var, I_rms from streamed statistics
:func:`check_prune_neurons`            ``fn(site, indices) -> restore``: the neurons are removed exactly
                                       (same function as :class:`~manu_lite.prune.NeuronMask`), nothing
                                       else changes, and ``restore()`` is bit-exact
:func:`check_own_score`                ``fn(forget_stats, retain_stats) -> scores``: shape, finite,
                                       deterministic, read-only, and it finds planted forget-specific
                                       neurons while ignoring neurons that are busy on both sets
=====================================  ===============================================================
"""
from __future__ import annotations

import functools
import traceback
from typing import Callable

import torch

from .hooks import NeuronSite, find_sites, record_neurons
from .importance import paper_components
from .stats import NeuronStats

__all__ = ["check_recording_hook", "check_importance_functions", "check_prune_neurons", "check_own_score",
           "tiny_model_and_batches"]


class Report:
    """Collects the parts of one check and prints them."""

    def __init__(self, name: str):
        self.name = name
        self.ok = True
        self.missing = False

    def part(self, label: str, test: Callable[[], None], hint: str) -> bool:
        """Run ``test``; an AssertionError's message or any exception is a failure of this part."""
        try:
            test()
        except NotImplementedError:
            if self.missing:  # said once is enough
                self.ok = False
                print(f"  FAIL  {label}: not implemented yet")
                return False
            self.missing = True
            return self._fail(label, "not implemented yet (the stub raises NotImplementedError)", hint)
        except AssertionError as exc:
            return self._fail(label, str(exc) or "assertion failed", hint)
        except Exception as exc:  # the student's code raised: show where
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return self._fail(label, f"{type(exc).__name__}: {exc} (at line {where.lineno} of {where.name})", hint)
        print(f"  PASS  {label}")
        return True

    def _fail(self, label: str, what: str, hint: str) -> bool:
        self.ok = False
        print(f"  FAIL  {label}: {what}\n        Hint: {hint}")
        return False

    def done(self) -> bool:
        print(f"{'PASS' if self.ok else 'FAIL'}: {self.name}" + ("" if self.ok else " (see the hints above)"))
        return self.ok


# ------------------------------------------------------------------------------------- a tiny test model
@functools.lru_cache(maxsize=1)
def _tiny():
    from PIL import Image

    from .models import Item, TinySpec, build_tiny, encode

    questions = [("Where was this person born?", "In Riga, Latvia."), ("What does this person do?", "A glassblower."),
                 ("When was this person born?", "In 1971."), ("What is this person's hobby?", "Origami.")]
    corpus = [f"USER: <image>\n{q}\nASSISTANT: {a}" for q, a in questions] * 4 + \
             [f"USER: {q.replace('this person', 'Vera Novak')}\nASSISTANT: {a}" for q, a in questions] * 4
    spec = TinySpec(hidden=32, layers=2, intermediate=48, heads=2, vision_hidden=16, vision_layers=2,
                    vision_intermediate=24, vocab_size=300)
    model, processor, adapter = build_tiny(corpus, spec, seed=0)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8).numpy())
              for _ in questions]
    image_text = encode(processor, adapter, [Item(q, "image_text", im, a) for (q, a), im in zip(questions, images)])
    text_only = encode(processor, adapter, [Item(q.replace("this person", "Vera Novak"), "text_only", None, a)
                                            for q, a in questions])
    batches = {"image_text": image_text, "text_only": text_only}
    with torch.no_grad():  # a first pass installs transformers' own hooks, so that snapshots taken later are stable
        for batch in batches.values():
            model(**_inputs(batch))
    return model, processor, batches


def tiny_model_and_batches():
    """A tiny random-init LLaVA (two layers per tower) and two batches, ``{"image_text": …, "text_only": …}``, each
    a dict of model inputs plus ``labels``. Built once per process (about a second)."""
    model, _, batches = _tiny()
    return model, batches


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _hook_keys(model) -> set[tuple[str, str, int]]:
    """Every registered forward (pre-)hook as (module name, kind, id). transformers installs hooks of its own (to
    capture hidden states) on the first forward pass; checks compare against a snapshot instead of expecting none."""
    return {(name, kind, key) for name, m in model.named_modules()
            for kind in ("_forward_pre_hooks", "_forward_hooks") for key in getattr(m, kind)}


def _new_hooks(model, before: set) -> list[str]:
    """Names of modules holding hooks that were not in ``before``; those hooks are removed (the next part starts
    clean)."""
    modules = dict(model.named_modules())
    new = sorted(_hook_keys(model) - before)
    for name, kind, key in new:
        getattr(modules[name], kind).pop(key, None)
    return list(dict.fromkeys(name for name, _, _ in new))


# ----------------------------------------------------------------------------------------- assignment 1
def check_recording_hook(fn: Callable[[torch.nn.Module, NeuronSite, dict], torch.Tensor]) -> bool:
    """Check ``fn(model, site, batch)``: it runs ``model`` once on ``batch`` (model inputs + ``labels``) and returns
    the activations of ``site``'s neurons — the input of ``site.out_module`` — with every hook removed afterwards."""
    report = Report("check_recording_hook")
    model, batches = tiny_model_and_batches()
    sites = {s.tower: s for s in reversed(find_sites(model))}  # the first site of each tower

    def reference(site, batch):
        seen = []
        with torch.no_grad(), record_neurons(model, [site], lambda s, a: seen.append(a.detach().clone())):
            model(**_inputs(batch))
        return seen[0]

    def same(tower: str, rendering: str):
        def test():
            site, batch = sites[tower], batches[rendering]
            before = _hook_keys(model)
            try:
                got = fn(model, site, batch)
            finally:
                left = _new_hooks(model, before)
            assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}, expected a torch.Tensor"
            want = reference(site, batch)
            assert tuple(got.shape) == tuple(want.shape), (
                f"shape {tuple(got.shape)}, expected {tuple(want.shape)} (the input of {site.out_proj}, last dim = "
                f"{site.width} neurons)")
            assert torch.equal(got.detach(), want), "the values differ from the input of " + site.out_proj
            assert not left, f"hooks are still registered on {left[:3]} after the call"
        return test

    report.part("language site, image+text batch", same("language", "image_text"),
                "register_forward_pre_hook on site.out_module (down_proj); the hook gets (module, args) and args[0] "
                "is [B, T, width]. Keep a reference, run model(**inputs) without 'labels', then handle.remove().")
    report.part("language site, text-only batch", same("language", "text_only"),
                "the same hook; nothing about the language site depends on the rendering")
    report.part("vision site, image+text batch", same("vision", "image_text"),
                "a vision MLP is fc2(act(fc1 x)): hook site.out_module (fc2), the same code as for down_proj")

    def cleanup_on_error():
        bad = dict(batches["text_only"])
        bad["input_ids"] = bad["input_ids"].clone()
        bad["input_ids"][0, -1] = 10 ** 6  # out of the vocabulary: the embedding raises inside forward
        before = _hook_keys(model)
        try:
            fn(model, sites["language"], bad)
        except NotImplementedError:
            raise
        except Exception:
            pass  # raising is fine; leaving a hook behind is not
        finally:
            left = _new_hooks(model, before)
        assert not left, f"after a forward pass that raised, hooks are still registered on {left[:3]}"

    report.part("no hook left behind when the forward pass raises", cleanup_on_error,
                "remove the handle in a `finally:` block (or use a context manager), so that an exception inside "
                "model(...) cannot leave a hook behind")
    return report.done()


# ----------------------------------------------------------------------------------------- assignment 2
def random_stats(seed: int, width: int = 64, tau: float = 0.1):
    """Statistics of two renderings with different activation distributions, and a neuron silent in both."""
    g = torch.Generator().manual_seed(seed)
    scale_m = torch.rand(width, generator=g) * 2
    scale_t = torch.rand(width, generator=g) * 2
    shift = torch.randn(width, generator=g) * 0.3
    multi = torch.randn(300, width, generator=g) * scale_m + shift
    text = torch.randn(170, width, generator=g) * scale_t - shift
    multi[:, 0] = 0
    text[:, 0] = 0
    return NeuronStats.from_activations(multi, tau), NeuronStats.from_activations(text, tau)


_IMPORTANCE_HINTS = {
    "abs": "I_abs = |Z̄_multi − Z̄_text| / (Z̄_multi + Z̄_text + eps), with Z̄ = mean |a| = stats.mean_abs",
    "freq": "I_freq = |N_multi − N_text| / (N_multi + N_text + eps), with N the share of tokens with |a| > tau: "
            "stats.freq (= count_above / count: the per-token reading, ManuConfig(paper_reduction='mean'); the "
            "paper as written uses the count, paper_reduction='sum')",
    "var": "I_var = sqrt(Var_multi + Var_text), not normalised; Var is the population variance stats.var "
           "(= m2 / count)",
    "rms": "I_rms = sqrt(|Z²_multi − Z²_text| / (Z²_multi + Z²_text + eps)), with Z² the mean of a²: stats.mean_sq "
           "(the per-token reading; as written Z² is the sum, paper_reduction='sum')",
}


def check_importance_functions(i_abs: Callable, i_freq: Callable, i_var: Callable, i_rms: Callable) -> bool:
    """Check the paper's four per-neuron contrasts, each ``fn(multi: NeuronStats, text: NeuronStats, eps) ->
    Tensor[width]`` (``multi`` = image+text statistics, ``text`` = text-only statistics of one dataset), in the
    per-token reading of N and Z² (``paper_components(..., reduction="mean")``)."""
    report = Report("check_importance_functions")
    cases = [random_stats(seed) for seed in (1, 2)]
    for key, fn in (("abs", i_abs), ("freq", i_freq), ("var", i_var), ("rms", i_rms)):
        def test(key=key, fn=fn):
            for multi, text in cases:
                for eps in (1e-5, 0.5):
                    want = paper_components(multi, text, eps=eps, reduction="mean")[key]
                    got = fn(multi, text, eps)
                    assert isinstance(got, torch.Tensor), f"returned {type(got).__name__}, expected a Tensor"
                    assert tuple(got.shape) == (multi.width,), f"shape {tuple(got.shape)}, expected ({multi.width},)"
                    assert torch.isfinite(got).all(), (
                        "NaN/Inf in the result (neuron 0 is silent in both renderings: does eps keep it finite?)")
                    worst = (got.double() - want).abs().max().item()
                    assert worst < 1e-6 * (1 + want.abs().max().item()), (
                        f"differs from the paper's I_{key} by up to {worst:.3g} (eps={eps})")
        report.part(f"I_{key}", test, _IMPORTANCE_HINTS[key])
    return report.done()


# ----------------------------------------------------------------------------------------- assignment 3
def check_prune_neurons(fn: Callable[[NeuronSite, torch.Tensor], Callable[[], None]]) -> bool:
    """Check ``restore = fn(site, indices)``: it removes the neurons ``indices`` of ``site`` in place (zero their
    column of the output projection and their rows, with bias entries, of the input projections) and returns a
    function that puts back exactly what it changed."""
    from .prune import NeuronMask

    report = Report("check_prune_neurons")
    model, batches = tiny_model_and_batches()
    sites = find_sites(model)
    targets = {"language": next(s for s in sites if s.tower == "language"),
               "vision": next(s for s in sites if s.tower == "vision")}
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def put_back():
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(original[k])

    def logits(batch):
        with torch.no_grad():
            return model(**_inputs(batch)).logits

    def removes(tower: str):
        def test():
            site = targets[tower]
            idx = torch.tensor([1, 4, site.width - 1])
            reference = NeuronMask({site.name: idx})
            with reference.applied(model):
                want = logits(batches["image_text"])
                pruned_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            try:
                restore = fn(site, idx)
                seen = []
                with torch.no_grad(), record_neurons(model, [site], lambda s, a: seen.append(a.detach().clone())):
                    got = model(**_inputs(batches["image_text"])).logits
                assert callable(restore), f"returned {type(restore).__name__}, expected a function restore()"
                silent = seen[0][..., idx].abs().max().item()
                assert silent == 0, f"the pruned neurons still fire (max |a| = {silent:.3g})"
                changed = [k for k, v in model.state_dict().items() if not torch.equal(v, pruned_state[k])]
                assert not changed, (f"parameters {changed[:3]} differ from removing exactly these neurons "
                                     "(too much or too little zeroed?)")
                assert torch.equal(got, want), "the model's output differs from NeuronMask's neuron removal"
            finally:
                put_back()
        return test

    report.part("language neurons removed (down_proj columns; gate_proj and up_proj rows)", removes("language"),
                "zero site.out_module.weight[:, idx] and, for every module in site.in_modules, weight[idx, :] and "
                "bias[idx] when there is a bias; do it in place under torch.no_grad()")
    report.part("vision neurons removed (fc2 columns; fc1 rows and bias)", removes("vision"),
                "the same code: fc1 has a bias, whose entries idx must be zeroed too (GELU(0) = 0)")

    def restores():
        site = targets["language"]
        try:
            for idx in (torch.tensor([0, 2, 3]), torch.tensor([2, 5])):  # twice, overlapping: no stale copies
                restore = fn(site, idx)
                assert callable(restore), f"returned {type(restore).__name__}, expected a function restore()"
                restore()
                changed = [k for k, v in model.state_dict().items() if not torch.equal(v, original[k])]
                assert not changed, f"after restore(), {changed[:3]} are not bit-identical to the original"
        finally:
            put_back()

    report.part("restore() is bit-exact (twice in a row)", restores,
                "before zeroing, save copies of exactly the slices you zero (weight[:, idx].clone(), …); restore() "
                "writes them back with index_copy_ or slice assignment under torch.no_grad()")
    return report.done()


# ----------------------------------------------------------------------------------------- assignment 4
def planted_stats(seed: int = 0, width: int = 200, planted: int = 10, tau: float = 0.1):
    """Synthetic forget/retain statistics of one rendering with known answers.

    Neurons have widely different base scales (some are simply loud). ``planted`` of them fire 4× harder on the
    forget set only (forget-specific: should rank first); as many are 4× louder on both sets (busy everywhere:
    should not), and as many are 4× louder on the retain set only. Neuron ``width - 1`` never fires.
    Returns ``(forget, retain, {"forget_specific": ids, "busy_everywhere": ids, "retain_specific": ids})``.
    """
    g = torch.Generator().manual_seed(seed)
    base = torch.exp(torch.randn(width, generator=g) * 0.6)
    order = torch.randperm(width - 1, generator=g)
    groups = {"forget_specific": order[:planted], "busy_everywhere": order[planted:2 * planted],
              "retain_specific": order[2 * planted:3 * planted]}
    f_scale, r_scale = base.clone(), base.clone()
    f_scale[groups["forget_specific"]] *= 4
    f_scale[groups["busy_everywhere"]] *= 4
    r_scale[groups["busy_everywhere"]] *= 4
    r_scale[groups["retain_specific"]] *= 4
    forget = torch.relu(torch.randn(400, width, generator=g)) * f_scale
    retain = torch.relu(torch.randn(2000, width, generator=g)) * r_scale
    forget[:, -1] = 0
    retain[:, -1] = 0
    return NeuronStats.from_activations(forget, tau), NeuronStats.from_activations(retain, tau), groups


def check_own_score(fn: Callable[[NeuronStats, NeuronStats], torch.Tensor], k: int = 10) -> bool:
    """Check an importance score ``fn(forget: NeuronStats, retain: NeuronStats) -> Tensor[width]`` of one rendering
    (higher = more forget-specific = pruned first) on statistics with planted forget-specific neurons."""
    report = Report("check_own_score")
    forget, retain, groups = planted_stats()
    saved = {name: {f: t.clone() for f, t in s.tensors().items()} for name, s in (("forget", forget), ("retain", retain))}
    result: dict[str, torch.Tensor] = {}

    def basics():
        scores = fn(forget, retain)
        assert isinstance(scores, torch.Tensor), f"returned {type(scores).__name__}, expected a Tensor"
        assert tuple(scores.shape) == (forget.width,), f"shape {tuple(scores.shape)}, expected ({forget.width},)"
        assert torch.isfinite(scores).all(), "NaN/Inf in the scores (the last neuron never fires: guard divisions)"
        for name, stats in (("forget", forget), ("retain", retain)):
            for f, t in stats.tensors().items():
                assert torch.equal(t, saved[name][f]), f"the function modified {name}.{f}: scores must be read-only"
        again = fn(forget, retain)
        assert torch.equal(scores, again), "two calls on the same statistics gave different scores"
        result["scores"] = scores

    report.part("a finite score per neuron, deterministic, statistics untouched", basics,
                "return a float tensor of shape [width]; add an eps to denominators; don't update the stats in place")

    def finds_planted():
        scores = result.get("scores")
        assert scores is not None, "skipped: the first part failed"
        top = set(torch.topk(scores.double(), k).indices.tolist())
        found = len(top & set(groups["forget_specific"].tolist()))
        busy = len(top & set(groups["busy_everywhere"].tolist()))
        retain_only = len(top & set(groups["retain_specific"].tolist()))
        assert found >= 0.8 * k, f"the top {k} holds only {found} of the {k} planted forget-specific neurons"
        assert busy <= 1, f"the top {k} holds {busy} neurons that are busy on forget AND retain"
        assert retain_only == 0, f"the top {k} holds {retain_only} retain-specific neurons"

    report.part(f"the top {k} are the planted forget-specific neurons", finds_planted,
                "compare forget with retain per neuron (a ratio or a difference normalised by the retain scale); "
                "a plain forget magnitude also picks neurons that are loud everywhere")
    return report.done()
