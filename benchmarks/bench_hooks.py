"""Cost of streaming neuron statistics: time overhead over a plain forward, and memory vs a naive collector.

    python benchmarks/bench_hooks.py [--batches 64] [--repeats 7] [--batch-size 32] [--seq-len 64]

Model: the tiny LLaVA of the tests (Llama text hidden 64, 2 layers, MLP 256; CLIP hidden 32, 2 layers, 32 px
images, patch 8), random init, batches of image+text inputs with 4 answer tokens per row.

Time: pairs of (plain forward of one batch, ``collect_stats`` on that same batch), the order inside a pair
alternating (``gpu_bench.interleaved_pairs``), over ``--time-batches`` batches and ``--repeats`` repeats. Both sides
call the model with identical arguments: the plain pass is ``gpu_bench.plain_pass`` (``use_cache=False``, no
labels, ``torch.no_grad()``), exactly what ``collect_stats`` passes, so neither side builds a KV cache the other
does not. Pairing at the batch level keeps bursts of machine load (a shared machine) from landing on one side
only; the overhead is the median of the per-pair ratios, printed with its quartiles and beside the absolute
seconds per input token of each side. A median below 0.98 — hooked *faster* than plain — is impossible as an
overhead and is reported as a measurement problem (``measurement_problem``; ``overhead_ratio`` is then null and
the number stays in ``measured_ratio``). Each ``collect_stats`` call also pays its per-pass setup (allocating the
totals, attaching and removing hooks), which a real many-batch pass amortises, so the figure is an upper bound.
Reported for recall positions (the default) and all positions (every token enters the statistics).
``--clock cpu`` (default) times with this process's CPU time, which other processes on a shared machine do not
inflate (with several threads it also counts OpenMP spin-waits); ``--clock wall`` uses wall time.

Memory: bytes of tensors *held* by each collector after a pass over ``--batches`` batches. The naive collector
(``gpu_bench.naive_collect``) stores every batch's neuron activations (all positions, in the model dtype, float32
here, as the released code does); ours holds a float64 count and five float64 vectors per site, whatever the
number of batches or the sequence length. Transient working memory of our hook (a few float32 copies of one
site's kept activations, freed before the next site runs) is reported separately as ``ours_transient_bytes``: it
is bounded by one activation tensor, like the forward pass itself.

The last line of output is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from gpu_bench import interleaved_pairs, naive_collect, plain_pass, quartiles  # noqa: E402
from tiny_models import tiny_llava  # noqa: E402

from manu_lite.hooks import find_sites  # noqa: E402
from manu_lite.stats import collect_stats  # noqa: E402

SUSPECT_RATIO = 0.98

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(fn, clock=time.process_time):
    start = clock()
    fn()
    return clock() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=64, help="batches for the memory comparison")
    parser.add_argument("--time-batches", type=int, default=8, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the tiny model gains nothing from more (0 = torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    args = parser.parse_args(argv)
    # After the import of tiny_models, which sets 1 thread for the tests.
    torch.set_num_threads(args.threads or os.cpu_count())

    model, make_batch = tiny_llava(seed=0)
    sites = find_sites(model)
    batches = [make_batch(args.batch_size, args.seq_len, seed=i) for i in range(args.batches)]
    timed_batches = batches[:args.time_batches]

    plain_pass(model, timed_batches)  # warm-up: first calls allocate and pick kernels
    collect_stats(model, timed_batches[:1], sites, progress=False)
    clock = CLOCKS[args.clock]
    timing = {}
    for positions in ("recall", "all"):
        pairs = interleaved_pairs(
            lambda batch: plain_pass(model, [batch]),
            lambda batch: collect_stats(model, [batch], sites, positions=positions, progress=False),
            timed_batches, args.repeats, lambda fn: timed(fn, clock))
        q1, median, q3 = quartiles(hooked / plain for plain, hooked in pairs)
        tokens = statistics.mean(b["input_ids"].numel() for b in timed_batches)
        per_token = {side: statistics.median(pair[i] for pair in pairs) / tokens
                     for i, side in enumerate(("plain", "hooked"))}
        problem = (f"hooked/plain median {median:.3f} < {SUSPECT_RATIO}: the hooked pass does strictly more work, "
                   "so this is noise (machine load, frequency scaling), not an overhead; rerun with more --repeats "
                   "on a quieter machine") if median < SUSPECT_RATIO else None
        timing[positions] = {"median": median, "q1": q1, "q3": q3, "per_token": per_token, "problem": problem}
        absolute = (f"per input token plain {per_token['plain'] * 1e6:.2f} us, hooked "
                    f"{per_token['hooked'] * 1e6:.2f} us ({args.clock} time); {len(pairs)} pairs")
        if problem:
            print(f"hooked/plain time, positions={positions}: MEASUREMENT PROBLEM, {problem} "
                  f"(quartiles {q1:.3f}-{q3:.3f}); {absolute}")
        else:
            print(f"hooked/plain time, positions={positions}: median {median:.3f} "
                  f"(quartiles {q1:.3f}-{q3:.3f}); {absolute}")

    stats = collect_stats(model, batches, sites, positions="all", progress=False)
    ours = sum(t.nbytes for s in stats.values() for t in s.tensors().values())
    transient = max(3 * args.batch_size * (args.seq_len if s.tower == "language" else 17) * s.width * 4
                    for s in sites)
    stored, _ = naive_collect(model, sites, batches)
    naive = sum(t.nbytes for _, t in stored)
    del stored
    print(f"held after {args.batches} batches: naive {naive / 2**20:.1f} MiB, ours {ours / 2**10:.1f} KiB "
          f"(ratio {naive / ours:.0f}x); our transient working set <= {transient / 2**20:.2f} MiB")
    result = {}
    for positions, suffix in (("recall", ""), ("all", "_all_positions")):
        t = timing[positions]
        result.update({
            f"overhead_ratio{suffix}": None if t["problem"] else round(t["median"], 4),
            f"measured_ratio{suffix}": round(t["median"], 4),
            f"ratio_quartiles{suffix}": [round(t["q1"], 4), round(t["q3"], 4)],
            f"plain_s_per_token{suffix}": t["per_token"]["plain"],
            f"hooked_s_per_token{suffix}": t["per_token"]["hooked"],
            f"measurement_problem{suffix}": t["problem"],
        })
    result.update({
        "memory_ratio_naive_over_ours": round(naive / ours, 1),
        "naive_bytes": naive,
        "ours_bytes": ours,
        "ours_transient_bytes": transient,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
    })
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
