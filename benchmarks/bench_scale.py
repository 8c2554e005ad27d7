"""MANU's costs at LLaVA-1.5-7B's widths, measured on CPU: a slice of the real model, a few layers per tower.

    python benchmarks/bench_scale.py                       # float32, 2 + 3 layers, 1 thread: ~9 min, < 8 GB
    python benchmarks/bench_scale.py --dtype bfloat16      # where the CPU has native bf16 (AMX, AVX512-BF16)
    python benchmarks/bench_scale.py --quick               # tiny widths, the same code in seconds (the test)

Model (no download): ``LlavaForConditionalGeneration`` from ``gpu_bench.build_llava`` with LLaVA-1.5-7B's shapes
— Llama text (hidden 4096, MLP 11008, 32 heads, vocab 32064) and CLIP ViT-L/14-336 (hidden 1024, MLP 4096,
336 px, patch 14: 576 image tokens, ``vision_feature_layer=-2``) — but only ``--text-layers`` decoder and
``--vision-layers`` encoder layers, random init, on CPU. Everything below runs on that slice, in one run:

1. **Hook overhead** (``overhead``): interleaved pairs (``gpu_bench.interleaved_pairs``) of a plain forward
   (``gpu_bench.plain_pass``) and ``collect_stats`` on the same image+text batch, both with ``use_cache=False`` and
   nothing else differing; the median and quartiles of hooked/plain, for recall positions (only answer-predicting
   positions enter the statistics) and for all positions; absolute seconds per input token beside the ratio, by
   CPU time and by wall time. A ratio below 0.98 (hooked *faster*) is reported as a measurement problem, not as
   an overhead. Each ``collect_stats`` call pays its per-pass setup, so the ratio is an upper bound for a long
   pass.
2. **Statistics memory** (``memory``): bytes held after one batch by the streamed statistics (``StatsTable``:
   a float64 count and five float64 vectors per site) and by the store-everything collector of the released code
   (``gpu_bench.naive_collect``: every site's activations, model dtype), on the same forward, per batch size,
   sequence length and rendering.
3. **Cost** (``cost``): each method in its own subprocess (a fresh model; its peak host memory is its own):
   MANU end to end (``manu_unlearn``: forget and retain statistics passes in both renderings, processor-encoded
   batches of a synthetic world, selection) and ``--steps`` steps of GA, GradDiff, KL and NPO (``unlearn_with``:
   forward, backward, AdamW step), LoRA (peft) and full fine-tuning; "one step" is the median of the steps after
   the first (which also pays the setup: peft wrapping, the reference copy, AdamW's state). Peak memory is
   the process's resident-set high-water mark during the method (VmHWM, reset before it starts). A full fine-tune
   whose estimated peak (its LoRA run's peak plus gradients, AdamW state and, for KL/NPO, the reference copy)
   exceeds ``--memory-budget-gb`` is skipped and says so. Costs are compared per forget sample (a forget
   question/answer pair: MANU's cost for it includes both renderings and the retain set's share, at the world's
   retain/forget ratio) and at the book's settings (MANU over the whole world; the baselines' ``UnlearnConfig()``
   budget, its batch size scaled linearly from the measured step).
4. **Extrapolated** (``extrapolated``, printed separately): the same figures for the full 32 + 24 layers, from
   per-layer measurements — each added layer costs the median measured layer of its tower (forward and backward
   seconds from layer hooks, among layers whose input carries a gradient when training), the optimizer step
   scales with the trainable parameters, and memory adds per layer its parameters, gradients, AdamW state,
   reference copy and autograd-saved activations (measured per layer with ``saved_tensors_hooks``) — all at once,
   so the extrapolated peak is an upper bound.

Every time that enters a ratio or an extrapolation is taken with one clock, ``--clock``: ``cpu`` (the default) is
this process's CPU time over all its threads, which other processes on a shared machine inflate far less than wall
time; ``wall`` is elapsed time. Seconds are of that clock. With several threads a descheduled thread leaves the
others spinning at OpenMP barriers, which CPU time counts, so the default is ``--threads 1`` (on this project's two
busy shared cores, 2 threads read hooked/plain 1.11x at recall positions where 1 thread read 1.00x).

The last line of output is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import (LLAVA_7B, SMALL, build_llava, interleaved_pairs, make_batches,  # noqa: E402
                       naive_collect, plain_pass, quartiles)

from manu_lite.baselines import METHODS, UnlearnConfig, unlearn_with  # noqa: E402
from manu_lite.cost import measure  # noqa: E402
from manu_lite.config import RENDERINGS, ManuConfig  # noqa: E402
from manu_lite.finetune import tokenizer_corpus, training_items  # noqa: E402
from manu_lite.hooks import candidate_sites, find_sites  # noqa: E402
from manu_lite.stats import StatsTable, collect_stats  # noqa: E402

FULL_LAYERS = {"language": LLAVA_7B.layers, "vision": LLAVA_7B.vision_layers}  # LLaVA-1.5-7B: 32 + 24
VARIANTS = ("lora", "full")
OVERHEAD_TARGET = 1.05
SUSPECT_RATIO = 0.98
STATS_TARGET_BYTES = 100 * 10**6
CLOCKS = ("cpu", "wall")
CLOCK_FUNCTIONS = {"cpu": time.process_time, "wall": time.perf_counter}


# ------------------------------------------------------------------------------------------------- helpers
def both_clocks(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def table_bytes(table: StatsTable) -> int:
    return sum(t.nbytes for s in table.values() for t in s.tensors().values())


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def site_counts(names) -> dict:
    """Sites per tower among site names such as ``"vision.1.fc2"``."""
    names = list(names)
    return {t: sum(1 for n in names if n.split(".", 1)[0] == t) for t in FULL_LAYERS}


def layer_sum(per_tower: dict, counts: dict) -> float:
    """Σ over towers of ``counts[tower] × per_tower[tower]`` (towers absent from ``per_tower`` add nothing)."""
    return sum(counts[t] * per_tower.get(t, 0) for t in counts)


class LayerProbe:
    """Per-layer seconds and saved bytes of a model's transformer layers (those holding ``find_sites``' MLPs),
    keyed ``"language.0"``, ``"vision.1"``: forward seconds (forward pre-hook to forward hook), backward seconds
    (full backward pre-hook to full backward hook; counted only for layers whose input requires grad — for the
    others the hooks fire at once, before the layer's weight gradients), and bytes the autograd graph saves
    inside each layer (``hooks()``; parameters and storages already counted excluded). Hooks survive
    ``copy.deepcopy`` (a frozen reference's layers report into the same slots) and peft wrapping. ``clock``:
    seconds of which clock (``time.process_time`` or ``time.perf_counter``)."""

    def __init__(self, model, backward: bool = True, clock=time.perf_counter):
        self.clock = clock
        self.layers = {f"{s.tower}.{s.layer}": model.get_submodule(s.path.rsplit(".", 1)[0])
                       for s in find_sites(model)}
        self.fwd = dict.fromkeys(self.layers, 0.0)
        self.bwd = dict.fromkeys(self.layers, 0.0)
        self.n_bwd = dict.fromkeys(self.layers, 0)
        self.grad_input = dict.fromkeys(self.layers, False)
        self.saved = dict.fromkeys(self.layers, 0)
        self.current: str | None = None
        self.saving = False
        self._started: dict[str, float] = {}
        self._seen: set[int] = set()
        self._handles = []
        for key, layer in self.layers.items():
            self._handles += [layer.register_forward_pre_hook(lambda m, args, key=key: self._enter(key, args)),
                              layer.register_forward_hook(lambda m, args, out, key=key: self._leave(key))]
            if backward:  # only where a backward runs: full backward hooks wrap every layer's inputs and outputs
                self._handles += [
                    layer.register_full_backward_pre_hook(lambda m, grad_out, key=key: self._back_enter(key)),
                    layer.register_full_backward_hook(lambda m, grad_in, grad_out, key=key: self._back_leave(key))]

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @staticmethod
    def tower(key: str) -> str:
        return key.split(".", 1)[0]

    def _enter(self, key, args):
        self.current = key
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self.grad_input[key] = True
        self._started[key] = self.clock()

    def _leave(self, key):
        self.fwd[key] += self.clock() - self._started[key]
        self.current = None

    def _back_enter(self, key):
        self._started["back " + key] = self.clock()

    def _back_leave(self, key):
        self.bwd[key] += self.clock() - self._started["back " + key]
        self.n_bwd[key] += 1

    def _pack(self, tensor):
        if self.saving and self.current is not None:
            try:
                storage = tensor.untyped_storage()
                ptr, size = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
                return tensor
            if ptr not in self._seen:
                self._seen.add(ptr)
                self.saved[self.current] += size
        return tensor

    def hooks(self):
        """The ``saved_tensors_hooks`` context that counts saved bytes while :meth:`start_saving` is on."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def start_saving(self, parameters) -> None:
        """Count saved bytes from now on, afresh; the storages of ``parameters`` are weights, not activations."""
        self.saved = dict.fromkeys(self.layers, 0)
        self._seen = {p.untyped_storage().data_ptr() for p in parameters}
        self.saving = True

    def snapshot(self) -> dict:
        return {"fwd": dict(self.fwd), "bwd": dict(self.bwd), "n_bwd": dict(self.n_bwd)}

    def between(self, before: dict, after: dict | None = None) -> dict:
        """Per layer: forward and backward seconds, and backward calls, from ``before`` to ``after`` (two
        :meth:`snapshot`; ``after`` defaults to now)."""
        now = after or self.snapshot()
        return {k: {"fwd": now["fwd"][k] - before["fwd"][k], "bwd": now["bwd"][k] - before["bwd"][k],
                    "n_bwd": now["n_bwd"][k] - before["n_bwd"][k]} for k in self.layers}

    def layers_with_backward(self, delta: dict) -> dict:
        """Per tower, how many layers had a backward through a gradient-carrying input in ``delta`` (a
        :meth:`between`): the layers
        :meth:`typical_seconds` draws from when training (0: it falls back to forward-only times)."""
        return {tower: sum(1 for k in self.layers if self.tower(k) == tower and delta[k]["n_bwd"]
                           and self.grad_input[k]) for tower in FULL_LAYERS}

    def typical_seconds(self, delta: dict) -> dict:
        """Per tower, the median layer's forward + backward seconds in ``delta`` (a :meth:`between`), over the
        layers with a backward through a gradient-carrying input when there are any (a middle layer of a deep
        model), else over all layers of the tower (forward only)."""
        out = {}
        for tower in FULL_LAYERS:
            keys = [k for k in self.layers if self.tower(k) == tower]
            trained = [k for k in keys if delta[k]["n_bwd"] and self.grad_input[k]]
            if keys:
                out[tower] = statistics.median(delta[k]["fwd"] + delta[k]["bwd"] for k in trained or keys)
        return out

    def layer_bytes(self, trainable: bool = False) -> dict:
        """Per tower, the largest layer's parameter bytes (only parameters that require grad if ``trainable``)."""
        out = {}
        for key, layer in self.layers.items():
            size = sum(p.numel() * p.element_size() for p in layer.parameters() if p.requires_grad or not trainable)
            out[self.tower(key)] = max(out.get(self.tower(key), 0), size)
        return out

    def layer_params(self, trainable: bool = False) -> dict:
        out = {}
        for key, layer in self.layers.items():
            n = sum(p.numel() for p in layer.parameters() if p.requires_grad or not trainable)
            out[self.tower(key)] = max(out.get(self.tower(key), 0), n)
        return out

    def saved_per_layer(self) -> dict:
        """Per tower, the largest layer's saved bytes in the current counting window."""
        out = {}
        for key, size in self.saved.items():
            out[self.tower(key)] = max(out.get(self.tower(key), 0), size)
        return out


# ------------------------------------------------------------------------------------------------- set-up
def slice_spec(args):
    base = SMALL if args.quick else LLAVA_7B
    return dataclasses.replace(base, layers=args.text_layers, vision_layers=args.vision_layers)


def layer_counts(spec) -> dict:
    return {"language": spec.layers, "vision": spec.vision_layers}


def added_layers(spec) -> dict:
    """Layers the full model has beyond the slice, per tower."""
    return {t: FULL_LAYERS[t] - n for t, n in layer_counts(spec).items()}


def world_processor(world, spec):
    """A BPE tokenizer trained on the world's prompts and a LLaVA processor at ``spec``'s image size."""
    from manu_lite.models import IMAGE_TOKEN, PromptAdapter, build_tiny_processor, train_tokenizer

    adapter = PromptAdapter("llava")
    tokenizer = train_tokenizer(tokenizer_corpus(world.forget_train + world.retain_train, adapter), spec.vocab_size)
    return build_tiny_processor(tokenizer, spec), adapter, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def world_counts(world) -> dict:
    """Question/answer pairs per ``"dataset/rendering"``: what MANU passes over (and the baselines draw from)."""
    return {f"{d}/{r}": len(training_items(records, (r,)))
            for d, records in (("forget", world.forget_train), ("retain", world.retain_train)) for r in RENDERINGS}


# ------------------------------------------------------------------------------------------- 1. overhead
def overhead_part(model, spec, dtype, args) -> dict:
    sites = candidate_sites(model)  # what MANU records (not the CLIP layers after vision_feature_layer)
    batches = make_batches(spec, args.time_batches, args.batch_size, args.text_len, args.answer_len, dtype,
                           torch.device("cpu"), args.seed)
    tokens = batches[0]["input_ids"].numel()
    probe = LayerProbe(model, backward=False, clock=CLOCK_FUNCTIONS[args.clock])
    plain_pass(model, batches[:1])  # warm-up: allocator pools, kernel choice, first hook registration
    collect_stats(model, batches[:1], sites, progress=False)
    pick = CLOCKS.index(args.clock)
    out = {"tokens_per_batch": tokens, "batch_size": args.batch_size, "seq_len": batches[0]["input_ids"].shape[1],
           "clock": args.clock}
    for positions in ("recall", "all"):
        layer_times = {"plain": [], "hooked": []}

        def probed(side, fn):
            before = probe.snapshot()
            fn()
            layer_times[side].append(probe.typical_seconds(probe.between(before)))

        pairs = interleaved_pairs(
            lambda batch: probed("plain", lambda: plain_pass(model, [batch])),
            lambda batch: probed("hooked", lambda: collect_stats(model, [batch], sites, positions=positions,
                                                                  progress=False)),
            batches, args.repeats, both_clocks)
        ratio = quartiles(h[pick] / p[pick] for p, h in pairs)
        wall_ratio = quartiles(h[1] / p[1] for p, h in pairs)
        entry = {
            "pairs": len(pairs),
            "ratio_median": round(ratio[1], 4), "ratio_quartiles": [round(ratio[0], 4), round(ratio[2], 4)],
            "wall_ratio_median": round(wall_ratio[1], 4),
            **{f"{side}_{clock}_s_per_token": statistics.median(pair[s][c] for pair in pairs) / tokens
               for s, side in enumerate(("plain", "hooked")) for c, clock in enumerate(CLOCKS)},
        }
        entry["measurement_problem"] = (
            f"hooked/plain median {ratio[1]:.3f} < {SUSPECT_RATIO}: the hooked pass cannot be faster than the plain "
            "one, so this is noise (machine load, frequency scaling), not an overhead; rerun with more --repeats "
            "on a quieter machine") if ratio[1] < SUSPECT_RATIO else None
        # Extrapolated to the full depth: the slice's pass plus the median layer, per added layer.
        full = {side: statistics.median(pair[s][pick] for pair in pairs)
                + layer_sum({t: statistics.median(d[t] for d in layer_times[side]) for t in FULL_LAYERS
                             if all(t in d for d in layer_times[side])}, added_layers(spec))
                for s, side in enumerate(("plain", "hooked"))}
        full_ratio = full["hooked"] / full["plain"]
        problem = (f"extrapolated hooked/plain {full_ratio:.3f} < {SUSPECT_RATIO}: noise, not an overhead"
                   if full_ratio < SUSPECT_RATIO else None)
        entry["extrapolated"] = {"plain_s": round(full["plain"], 4), "hooked_s": round(full["hooked"], 4),
                                 "ratio": round(full_ratio, 4), "measurement_problem": problem}
        out[positions] = entry
    probe.remove()
    recall = out["recall"]
    out["target_max_ratio"] = OVERHEAD_TARGET
    out["target_met"] = None if recall["measurement_problem"] else recall["ratio_median"] <= OVERHEAD_TARGET
    return out


# --------------------------------------------------------------------------------------------- 2. memory
def memory_part(model, spec, dtype, args) -> dict:
    """Ours: the statistics MANU holds, over its candidate sites; store-everything: every MLP's activations, as the
    released code hooks them. Extrapolated: bytes per site of each tower times the full model's site count (the
    CLIP layers after ``vision_feature_layer`` are as many in the full model as in the slice)."""
    sites, candidates = find_sites(model), candidate_sites(model)
    towers = {s.name: s.tower for s in sites}
    counts, candidate_counts = site_counts(towers), site_counts(s.name for s in candidates)
    full = {t: FULL_LAYERS[t] for t in FULL_LAYERS}
    full_candidates = {t: FULL_LAYERS[t] - (counts[t] - candidate_counts[t]) for t in FULL_LAYERS}
    grid = []
    for rendering in RENDERINGS:
        for text_len in args.memory_text_lens:
            for batch_size in args.memory_batch_sizes:
                batch = make_batches(spec, 1, batch_size, text_len, args.answer_len, dtype, torch.device("cpu"),
                                     args.seed, image=rendering == "image_text")
                tables = []  # both collectors on one forward: ours inside the store-everything pass
                stored, oom = naive_collect(model, sites, batch, run=lambda m, b: tables.append(
                    collect_stats(m, b, candidates, progress=False)))
                table = tables[0]
                naive = {t: sum(x.nbytes for name, x in stored if towers[name] == t) for t in FULL_LAYERS}
                del stored
                ours = {t: sum(table_bytes({n: table[n]}) for n in table if towers[n] == t) for t in FULL_LAYERS}
                full_ours = sum(ours[t] / candidate_counts[t] * full_candidates[t] for t in FULL_LAYERS)
                full_naive = sum(naive[t] / counts[t] * full[t] for t in FULL_LAYERS)
                grid.append({"rendering": rendering, "batch_size": batch_size,
                             "seq_len": batch[0]["input_ids"].shape[1],
                             "ours_bytes": sum(ours.values()), "naive_bytes": sum(naive.values()),
                             "naive_over_ours": round(sum(naive.values()) / sum(ours.values()), 1),
                             "naive_oom": oom,
                             "extrapolated_ours_bytes": int(full_ours), "extrapolated_naive_bytes": int(full_naive)})
    one_table = grid[0]["extrapolated_ours_bytes"]
    n_tables = 2 * len(RENDERINGS)  # (forget, retain) × renderings: what MANU holds at once
    return {"grid": grid, "ours_constant": len({g["ours_bytes"] for g in grid}) == 1,
            "tables_held_by_manu": n_tables, "sites": counts, "candidate_sites": candidate_counts,
            "full_model_sites": full, "full_model_candidate_sites": full_candidates,
            "extrapolated": {"ours_bytes_per_table": one_table, "ours_bytes_manu": n_tables * one_table,
                             "target_max_bytes": STATS_TARGET_BYTES,
                             "target_met": n_tables * one_table <= STATS_TARGET_BYTES}}


# ----------------------------------------------------------------------------------------------- 3. cost
def worker(args) -> dict:
    """One method on a fresh slice model: ``manu`` or ``<method>/<variant>``. Returns its figures."""
    from manu_lite.bench import load_world
    from manu_lite.manu import manu_unlearn

    spec, dtype = slice_spec(args), getattr(torch, args.dtype)
    world = load_world(args.world, "forget_10")
    processor, adapter, image_token = world_processor(world, spec)
    torch.manual_seed(args.seed)
    model = build_llava(spec, dtype, torch.device("cpu"), image_token_index=image_token)
    clock = CLOCK_FUNCTIONS[args.clock]
    probe = LayerProbe(model, clock=clock)
    out = {"name": args.worker, "clock": args.clock, "parameters": sum(p.numel() for p in model.parameters())}
    start_rss = rss_bytes()
    if args.worker == "manu":
        passes = {}

        def timed_collector(model, batches, sites, **kwargs):
            rows = [0]
            counter = model.register_forward_pre_hook(
                lambda m, a, kw: rows.__setitem__(0, rows[0] + kw["input_ids"].shape[0]), with_kwargs=True)
            before, started = probe.snapshot(), clock()
            try:
                table = collect_stats(model, batches, sites, **kwargs)
            finally:
                counter.remove()
            seconds = clock() - started
            extra = layer_sum(probe.typical_seconds(probe.between(before)), added_layers(spec))
            passes[kwargs["desc"].replace(" ", "/")] = {
                "sequences": rows[0], "seconds": seconds, "s_per_sequence": seconds / rows[0],
                "extrapolated_s_per_sequence": (seconds + extra) / rows[0]}
            return table

        config = ManuConfig(max_batches=args.manu_batches)
        with measure() as cost:
            _, report = manu_unlearn(model, processor, world.forget_train[:1], world.retain_train[:1], config,
                                     adapter=adapter, batch_size=args.manu_batch_size, progress=False,
                                     collector=timed_collector)
        table = next(iter(report.stats.values()))
        per_site = {t: sum(table_bytes({n: s}) for n, s in table.items() if n.startswith(t + ".")) / max(1, n)
                    for t, n in site_counts(table).items()}
        out.update(passes=passes, seconds=cost["seconds"], selection_s=report.timings["selection"],
                   stats_bytes=report.stats_bytes)
        # Per added layer: its weights and its sites' statistics (activations are transient in a no-grad pass).
        extra_stats = len(report.stats) * layer_sum(per_site, added_layers(spec))
        extra_bytes = layer_sum(probe.layer_bytes(), added_layers(spec)) + extra_stats
        out["extrapolated_stats_bytes"] = int(report.stats_bytes + extra_stats)
    else:
        method, variant = args.worker.split("/")
        config = UnlearnConfig(steps=args.steps, batch_size=args.method_batch_size, lora=variant == "lora",
                               seed=args.seed)
        marks = []
        optimizer_s = [0.0]
        state = {}

        def on_step(step, network):
            marks.append((clock(), probe.snapshot(), optimizer_s[0]))
            # What is trained, read now: LoRA adapters are merged away when unlearn_with returns.
            state.update(trainable=sum(p.numel() for p in network.parameters() if p.requires_grad),
                         layer_bytes=probe.layer_bytes(), trainable_layer_bytes=probe.layer_bytes(trainable=True),
                         trainable_layer_params=probe.layer_params(trainable=True))
            if step < args.steps:
                probe.start_saving(network.parameters())  # count the next step's saved activations (the last stays)
            else:
                probe.saving = False

        def opt_pre(optimizer, a, kw):
            state["opt_started"] = clock()

        def opt_post(optimizer, a, kw):
            optimizer_s[0] += clock() - state["opt_started"]

        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        handles = [register_optimizer_step_pre_hook(opt_pre), register_optimizer_step_post_hook(opt_post)]
        start_mark = (clock(), probe.snapshot(), 0.0)
        probe.start_saving(model.parameters())
        try:
            with measure() as cost, probe.hooks(), warnings.catch_warnings():
                # LoRA: the first decoder layer's input carries no gradient; LayerProbe does not use that layer.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                report = unlearn_with(method, model, processor, adapter, world, config, progress=False,
                                      on_step=on_step)
        finally:
            for handle in handles:
                handle.remove()
        marks.insert(0, start_mark)
        step_times = [marks[i][0] - marks[i - 1][0] for i in range(1, len(marks))]
        # "One step": the median of the steps after the first (which also pays the setup and AdamW's state).
        later = [(step_times[i - 1], i) for i in range(2, len(marks))] or [(step_times[0], 1)]
        step_s, i = sorted(later)[(len(later) - 1) // 2]
        (_, snap, opt_a), (_, snap_b, opt_b) = marks[i - 1], marks[i]
        optimizer_step_s = opt_b - opt_a
        trainable = state["trainable"]
        trainable_full = trainable + layer_sum(state["trainable_layer_params"], added_layers(spec))
        reference_copy = method in ("kl", "npo") and variant == "full"
        per_layer_bytes = {t: state["layer_bytes"].get(t, 0) * (1 + reference_copy)
                           + 3 * state["trainable_layer_bytes"].get(t, 0)  # gradient + AdamW's two moments
                           + probe.saved_per_layer().get(t, 0) for t in FULL_LAYERS}
        extra_bytes = layer_sum(per_layer_bytes, added_layers(spec))
        one_step = probe.between(snap, snap_b)
        extra_s = layer_sum(probe.typical_seconds(one_step), added_layers(spec)) \
            + optimizer_step_s * (trainable_full / trainable - 1)
        out.update(method=method, variant=variant, batch_size=config.batch_size, steps=len(report["losses"]),
                   losses=report["losses"], seconds=cost["seconds"], step_times_s=step_times,
                   first_step_s=step_times[0], step_s=step_s, setup_s=max(0.0, step_times[0] - step_s),
                   optimizer_step_s=optimizer_step_s,
                   step_s_per_forget_sample=step_s / config.batch_size, trainable_parameters=trainable,
                   saved_activation_bytes_per_layer=probe.saved_per_layer(),
                   extrapolated_step_s=step_s + extra_s, extrapolated_trainable_parameters=int(trainable_full),
                   layers_with_backward=probe.layers_with_backward(one_step))
    out["rss_method"] = cost["rss_method"]
    out["peak_rss_above_start_bytes"] = int(cost["peak_rss_mb"] * 2**20)
    out["peak_rss_bytes"] = int(cost["peak_rss_mb"] * 2**20 + (start_rss or 0))
    out["extrapolated_peak_rss_bytes"] = int(out["peak_rss_bytes"] + extra_bytes)
    return out


def run_worker(name: str, argv: list[str], world: str, in_process: bool) -> dict:
    args = [*argv, "--worker", name, "--world", world]
    if in_process:
        return worker(parse_args(args))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        return {"name": name, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])


def estimated_full_peak(lora: dict | None, parameter_bytes: int, method: str) -> int:
    """A full fine-tune's peak: its LoRA run's peak (weights and activations) plus a gradient and AdamW's two
    moments per parameter and, for KL and NPO, the frozen reference copy."""
    base = lora["peak_rss_bytes"] if lora and "peak_rss_bytes" in lora else parameter_bytes + 2**30
    return int(base + parameter_bytes * (3 + (method in ("kl", "npo"))))


def book_costs(manu: dict, runs: dict, counts: dict, extrapolated: bool) -> dict:
    """MANU vs each baseline per forget sample and at the book's settings, as ratios (> 1: MANU costs more).

    MANU at the book's settings: every question/answer pair of the world (``counts``) through its pass, at the
    measured seconds per sequence of that (dataset, rendering), plus the selection. A baseline: its setup (the
    first step's time beyond a step; scaled like the step when extrapolated) plus ``UnlearnConfig().steps`` steps
    of ``UnlearnConfig().batch_size`` forget samples at the measured seconds per forget sample (linear in the
    batch). ``break_even_forget_samples``: the forget-set size (with the world's retain/forget ratio) at which
    MANU over the whole world costs as much as the baseline."""
    book = UnlearnConfig()
    key = "extrapolated_s_per_sequence" if extrapolated else "s_per_sequence"
    per_sequence = {name: p[key] for name, p in manu["passes"].items()}
    manu_total = sum(counts[name] * per_sequence[name] for name in counts) + manu["selection_s"]
    forget_samples = counts["forget/image_text"]
    manu_per_sample = manu_total / forget_samples
    out = {"manu_book_s": round(manu_total, 3), "manu_s_per_forget_sample": round(manu_per_sample, 4),
           "forget_samples": forget_samples, "baselines": {}}
    for name, run in runs.items():
        if "step_s" not in run:
            continue
        step = run["extrapolated_step_s" if extrapolated else "step_s"]
        scale = step / run["step_s"]
        per_sample = step / run["batch_size"]
        book_s = run["setup_s"] * scale + book.steps * book.batch_size * per_sample
        out["baselines"][name] = {
            "step_s_per_forget_sample": round(per_sample, 4), "book_s": round(book_s, 3),
            "manu_over_one_step_per_forget_sample": round(manu_per_sample / per_sample, 3),
            "manu_over_baseline_at_book_settings": round(manu_total / book_s, 3),
            "break_even_forget_samples": round(book_s / manu_per_sample, 1)}
    return out


def cost_part(args, argv, spec, dtype, parameter_bytes) -> dict:
    from manu_lite.bench import load_world
    from manu_lite.profiles import make_world_data

    in_process = args.quick and not args.subprocesses
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        bench = Path(tmp) / "bench"
        if args.quick:
            make_world_data(bench, profiles=20, celebrities=4, seed=args.seed)
        else:
            make_world_data(bench, seed=args.seed)  # the book's tiny world: 50 people, 10 celebrities
        world = load_world(str(bench), "forget_10")
        counts = world_counts(world)
        print(f"world: {len(world.forget_train)} forget and {len(world.retain_train)} retain people, "
              f"question/answer pairs {counts}", flush=True)
        manu = run_worker("manu", argv, str(bench), in_process)
        print(f"MANU: {json.dumps(manu)}", flush=True)
        runs = {}
        for variant in VARIANTS:
            for method in args.methods:
                name = f"{method}/{variant}"
                if variant == "full":
                    estimate = estimated_full_peak(runs.get(f"{method}/lora"), parameter_bytes, method)
                    if estimate > args.memory_budget_gb * 2**30:
                        runs[name] = {"name": name, "skipped": (
                            f"estimated peak {estimate / 2**30:.1f} GiB > --memory-budget-gb "
                            f"{args.memory_budget_gb:g}: rerun with a larger budget, --dtype bfloat16 or fewer "
                            "--text-layers"), "estimated_peak_rss_bytes": estimate}
                        print(f"{name}: skipped ({runs[name]['skipped']})", flush=True)
                        continue
                runs[name] = run_worker(name, argv, str(bench), in_process)
                print(f"{name}: {json.dumps(runs[name])}", flush=True)
    if "passes" not in manu:
        return {"world": counts, "manu": manu, "baselines": runs}
    return {"world": counts, "manu": manu, "baselines": runs,
            "measured": book_costs(manu, runs, counts, extrapolated=False),
            "extrapolated": book_costs(manu, runs, counts, extrapolated=True)}


# ----------------------------------------------------------------------------------------------- report
def targets(result: dict) -> dict:
    """The issue's acceptance figures: hooked/plain at recall positions <= 1.05 (None when not measured or when
    the measurement was flagged), extrapolated statistics of a full MANU run <= 100 MB."""
    over, memory = result.get("overhead"), result.get("memory")
    return {"overhead_recall_ratio": over["recall"]["ratio_median"] if over else None,
            "overhead_recall_le_1.05": over["target_met"] if over else None,
            "extrapolated_stats_bytes": memory["extrapolated"]["ours_bytes_manu"] if memory else None,
            "extrapolated_stats_le_100MB": memory["extrapolated"]["target_met"] if memory else None}


def mb(n) -> str:
    return f"{n / 1e6:,.1f} MB"


def print_report(result: dict) -> None:
    over, memory, cost = result.get("overhead"), result.get("memory"), result.get("cost")
    print(f"\n== measured on the slice ({result['text_layers']} text + {result['vision_layers']} vision layers, "
          f"{result['dtype']}, {result['threads']} threads; seconds of the {result['clock']} clock unless marked "
          "wall) ==")
    if over:
        for positions in ("recall", "all"):
            e = over[positions]
            head = (f"MEASUREMENT PROBLEM ({e['measurement_problem']})" if e["measurement_problem"]
                    else f"hooked/plain {e['ratio_median']:.3f} (quartiles {e['ratio_quartiles'][0]:.3f}-"
                         f"{e['ratio_quartiles'][1]:.3f})")
            print(f"statistics pass, positions={positions}: {head}; per token plain "
                  f"{e['plain_cpu_s_per_token'] * 1e3:.3f} ms CPU / {e['plain_wall_s_per_token'] * 1e3:.3f} ms wall, "
                  f"hooked {e['hooked_cpu_s_per_token'] * 1e3:.3f} / {e['hooked_wall_s_per_token'] * 1e3:.3f} ms; "
                  f"wall ratio {e['wall_ratio_median']:.3f}; {e['pairs']} pairs, {over['clock']} clock")
    if memory:
        for g in memory["grid"]:
            print(f"held after one batch, {g['rendering']}, batch {g['batch_size']} x {g['seq_len']} tokens: "
                  f"ours {mb(g['ours_bytes'])}, store-everything {mb(g['naive_bytes'])} "
                  f"({g['naive_over_ours']}x)")
    if cost and "measured" in cost:
        m = cost["manu"]
        print(f"MANU end to end: {m['seconds']:.1f} s wall, peak RSS {mb(m['peak_rss_bytes'])}, per sequence "
              + ", ".join(f"{k} {p['s_per_sequence']:.3f} s" for k, p in m["passes"].items()))
        book = cost["measured"]
        print(f"MANU per forget sample (both renderings, retain share of the book's world): "
              f"{book['manu_s_per_forget_sample']:.3f} s; over the book's world {book['manu_book_s']:.1f} s")
        for name, run in cost["baselines"].items():
            if "skipped" in run or "error" in run:
                print(f"{name}: {run.get('skipped') or run.get('error')}")
                continue
            b = book["baselines"][name]
            print(f"{name}: one step {run['step_s']:.2f} s (batch {run['batch_size']}, "
                  f"{b['step_s_per_forget_sample']:.3f} s per forget sample), peak RSS {mb(run['peak_rss_bytes'])}; "
                  f"MANU / one step per forget sample {b['manu_over_one_step_per_forget_sample']:.2f}, "
                  f"MANU / baseline at book settings {b['manu_over_baseline_at_book_settings']:.2f}")
    print(f"\n== extrapolated to the full {FULL_LAYERS['language']} + {FULL_LAYERS['vision']} layers "
          "(per-layer scaling of the measurements above; not measured) ==")
    if over:
        for positions in ("recall", "all"):
            e = over[positions]["extrapolated"]
            flag = f"; MEASUREMENT PROBLEM ({e['measurement_problem']})" if e["measurement_problem"] else ""
            print(f"extrapolated statistics pass, positions={positions}: plain {e['plain_s']:.2f} s, hooked "
                  f"{e['hooked_s']:.2f} s per batch ({result['clock']} time; ratio {e['ratio']:.3f}{flag})")
    if memory:
        e = memory["extrapolated"]
        print(f"extrapolated statistics held by MANU ({memory['tables_held_by_manu']} tables): "
              f"{mb(e['ours_bytes_manu'])} (target <= {mb(e['target_max_bytes'])}: "
              f"{'met' if e['target_met'] else 'NOT met'})")
        for g in memory["grid"]:
            print(f"extrapolated store-everything, {g['rendering']}, batch {g['batch_size']} x {g['seq_len']}: "
                  f"{mb(g['extrapolated_naive_bytes'])} per batch")
    if cost and "extrapolated" in cost:
        book = cost["extrapolated"]
        print(f"extrapolated MANU per forget sample {book['manu_s_per_forget_sample']:.2f} s, peak RSS "
              f"{mb(cost['manu']['extrapolated_peak_rss_bytes'])}")
        for name, b in book["baselines"].items():
            run = cost["baselines"][name]
            missing = [t for t in ("language", "vision") if not run["layers_with_backward"][t]
                       and (t == "language" or run["variant"] == "full")]
            caveat = (f" [no slice {'/'.join(missing)} layer had a measured backward, so added layers count their "
                      "forward only: an underestimate; use --text-layers >= 2, --vision-layers >= 3]"
                      if missing else "")
            print(f"extrapolated {name}: one step {run['extrapolated_step_s']:.1f} s, peak RSS "
                  f"{mb(run['extrapolated_peak_rss_bytes'])}; MANU / one step per forget sample "
                  f"{b['manu_over_one_step_per_forget_sample']:.2f}, at book settings "
                  f"{b['manu_over_baseline_at_book_settings']:.2f}{caveat}")
        for name, run in cost["baselines"].items():
            if "skipped" in run:
                print(f"extrapolated {name}: not run; its slice would need "
                      f"{mb(run['estimated_peak_rss_bytes'])} (estimated)")
    t = result["targets"]
    print(f"\ntargets: hooked/plain at recall positions <= {OVERHEAD_TARGET}: {t['overhead_recall_le_1.05']} "
          f"(median {t['overhead_recall_ratio']}); extrapolated statistics of a MANU run <= 100 MB: "
          f"{t['extrapolated_stats_le_100MB']} ({t['extrapolated_stats_bytes']} bytes)")


# ------------------------------------------------------------------------------------------------- main
def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths (TinySpec), a few seconds: the test")
    parser.add_argument("--text-layers", type=int, default=2, help="decoder layers of the slice (the model has 32)")
    parser.add_argument("--vision-layers", type=int, default=3,
                        help="CLIP layers of the slice (the model has 24; with vision_feature_layer=-2 the last two "
                             "are not backpropagated through their own output, so 3 leaves one typical layer)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default). 1 by default: on a shared machine a thread that "
                             "is descheduled leaves the others spinning at OpenMP barriers, which inflates CPU time "
                             "most for the many small kernels of the hooked pass (2 threads on 2 busy cores read "
                             "1.11x where 1 thread read 1.00x)")
    parser.add_argument("--parts", default="overhead,memory,cost", help="comma-separated subset to run")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="clock of the hooked/plain ratio")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats over --time-batches (default 3)")
    parser.add_argument("--time-batches", type=int, default=2, help="distinct batches in the timing pairs")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the timing pairs")
    parser.add_argument("--text-len", type=int, default=None, help="prompt tokens besides the image (default 48)")
    parser.add_argument("--answer-len", type=int, default=8)
    parser.add_argument("--memory-batch-sizes", type=ints, default=None, help="default 1,2")
    parser.add_argument("--memory-text-lens", type=ints, default=None, help="default 48,304")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=2,
                        help="baseline steps per method; one step = the median of those after the first")
    parser.add_argument("--method-batch-size", type=int, default=1,
                        help="forget samples per baseline step (graddiff/kl add as many retain samples)")
    parser.add_argument("--manu-batch-size", type=int, default=2)
    parser.add_argument("--manu-batches", type=int, default=2, help="batches per (dataset, rendering) pass")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0,
                        help="skip a full fine-tune whose estimated peak host memory exceeds this")
    parser.add_argument("--subprocesses", action="store_true", help="--quick: one process per method anyway")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {"repeats": 2, "text_len": 8, "memory_batch_sizes": [1, 2], "memory_text_lens": [8, 24]}
    slice_ = {"repeats": 3, "text_len": 48, "memory_batch_sizes": [1, 2], "memory_text_lens": [48, 304]}
    for key, value in (quick if args.quick else slice_).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.parts = [p for p in args.parts.split(",") if p]
    return args


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = worker(args)
        print(json.dumps(result), flush=True)
        return result
    started = time.perf_counter()
    spec, dtype = slice_spec(args), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    model = build_llava(spec, dtype, torch.device("meta" if "overhead" not in args.parts
                                                  and "memory" not in args.parts else "cpu"))
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result = {"shapes": "tiny" if args.quick else "llava-1.5-7b slice", "spec": spec.to_dict(),
              "text_layers": spec.layers, "vision_layers": spec.vision_layers,
              "full_layers": FULL_LAYERS, "dtype": args.dtype, "threads": torch.get_num_threads(), "clock": args.clock,
              "parameters": sum(p.numel() for p in model.parameters()), "parameter_bytes": parameter_bytes,
              "overhead": None, "memory": None, "cost": None}
    if "overhead" in args.parts:
        result["overhead"] = overhead_part(model, spec, dtype, args)
        print(f"overhead: {json.dumps(result['overhead'])}", flush=True)
    if "memory" in args.parts:
        result["memory"] = memory_part(model, spec, dtype, args)
        print(f"memory: {json.dumps(result['memory'])}", flush=True)
    del model
    if "cost" in args.parts:
        result["cost"] = cost_part(args, argv, spec, dtype, parameter_bytes)
    result["targets"] = targets(result)
    result["total_s"] = round(time.perf_counter() - started, 1)
    print_report(result)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
