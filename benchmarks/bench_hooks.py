"""Cost of streaming neuron statistics: time overhead over a plain forward, and memory vs a naive collector.

    python benchmarks/bench_hooks.py [--batches 64] [--repeats 7] [--batch-size 32] [--seq-len 64]

Model: the tiny LLaVA of the tests (Llama text hidden 64, 2 layers, MLP 256; CLIP hidden 32, 2 layers, 32 px
images, patch 8), random init, batches of image+text inputs with 4 answer tokens per row.

Time: pairs of (plain forward of one batch, ``collect_stats`` on that same batch), the order inside a pair
alternating, both under ``torch.no_grad()``, over ``--time-batches`` batches and ``--repeats`` repeats. Pairing
at the batch level keeps bursts of machine load (a shared machine) from landing on one side only; the overhead is
the median of the per-pair ratios. Each ``collect_stats`` call also pays its per-pass setup (allocating the
totals, attaching and removing hooks), which a real many-batch pass amortises, so the figure is an upper bound.
Reported for recall positions (the default) and all positions (every token enters the statistics).
``--clock cpu`` (default) times with this process's CPU time, which other processes on a shared machine do not
inflate (with several threads it also counts OpenMP spin-waits); ``--clock wall`` uses wall time.

Memory: bytes of tensors *held* by each collector after a pass over ``--batches`` batches. The naive collector
stores every batch's neuron activations (all positions, float32, as the released code does); ours holds five
float64 vectors per site, whatever the number of batches or the sequence length. Transient working memory of our
hook (a few float32 copies of one site's kept activations, freed before the next site runs) is reported
separately as ``ours_transient_bytes``: it is bounded by one activation tensor, like the forward pass itself.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import tiny_llava  # noqa: E402

from manu_lite.hooks import find_sites, record_neurons  # noqa: E402
from manu_lite.importance import collect_stats  # noqa: E402


def plain_pass(model, batches):
    with torch.no_grad():
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(fn, clock=time.process_time):
    start = clock()
    fn()
    return clock() - start


def naive_held_bytes(model, sites, batches) -> int:
    """Bytes a store-everything collector holds after the pass (the released code's approach)."""
    stored: list[torch.Tensor] = []
    with record_neurons(model, sites, lambda site, acts: stored.append(acts.detach().float().cpu().clone())), \
            torch.no_grad():
        plain_pass(model, batches)
    return sum(t.nbytes for t in stored)


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
    ratios = {"recall": [], "all": []}
    for repeat in range(args.repeats):
        for i, batch in enumerate(timed_batches):
            for positions, values in ratios.items():
                run_stats = lambda: collect_stats(model, [batch], sites, positions=positions, progress=False)  # noqa: E731
                run_plain = lambda: plain_pass(model, [batch])  # noqa: E731
                clock = CLOCKS[args.clock]
                if (repeat + i) % 2:
                    t_hooked, t_plain = timed(run_stats, clock), timed(run_plain, clock)
                else:
                    t_plain, t_hooked = timed(run_plain, clock), timed(run_stats, clock)
                values.append(t_hooked / t_plain)
    for positions, values in ratios.items():
        quartiles = statistics.quantiles(values, n=4)
        print(f"hooked/plain time, positions={positions}: median {statistics.median(values):.3f} "
              f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}, {len(values)} pairs)")

    stats = collect_stats(model, batches, sites, positions="all", progress=False)
    ours = sum(t.nbytes for s in stats.values() for t in s.tensors().values())
    transient = max(3 * args.batch_size * (args.seq_len if s.tower == "language" else 17) * s.width * 4
                    for s in sites)
    naive = naive_held_bytes(model, sites, batches)
    print(f"held after {args.batches} batches: naive {naive / 2**20:.1f} MiB, ours {ours / 2**10:.1f} KiB "
          f"(ratio {naive / ours:.0f}x); our transient working set <= {transient / 2**20:.2f} MiB")
    result = {
        "overhead_ratio": round(statistics.median(ratios["recall"]), 4),
        "overhead_ratio_all_positions": round(statistics.median(ratios["all"]), 4),
        "memory_ratio_naive_over_ours": round(naive / ours, 1),
        "naive_bytes": naive,
        "ours_bytes": ours,
        "ours_transient_bytes": transient,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
