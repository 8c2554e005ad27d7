"""The MANU demonstration on the embedded default, averaged over seeds.

For each seed: a synthetic world (its own people and forget split), the tiny vanilla model trained on it, MANU
statistics collected once, then a mask per α (selection reuses the statistics). Every model is evaluated on
forget / retain / celebrity in both renderings. Prints one line per (seed, α) and, last, one JSON line with the
drops (vanilla − MANU, in points) averaged over seeds, per α.

    python benchmarks/manu_demo_seeds.py --seeds 0 1 2 --alphas 5 10 20
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from manu_lite.evaluate import EvalConfig, evaluate
from manu_lite.hooks import find_sites
from manu_lite.importance import select
from manu_lite.manu import choose_prune_mode, manu_unlearn
from manu_lite.prune import NeuronMask
from manu_lite.config import TINY_EVAL, TINY_MANU
from manu_lite.profiles import tiny_vanilla, tiny_world

SETS = ("forget", "retain", "celebrity")


def drops(before, after) -> dict[str, float]:
    """Points lost per ``set/task/rendering``: 100 × (vanilla − unlearned)."""
    out = {}
    for record in before:
        key = (record["set"], record["task"], record["rendering"])
        out["/".join(key)] = 100 * (record["value"] - after.value("manu", *key))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--alphas", type=float, nargs="+", default=[TINY_MANU.alpha])
    parser.add_argument("--formulation", default=TINY_MANU.formulation)
    parser.add_argument("--positions", default=TINY_MANU.positions)
    parser.add_argument("--towers", default=",".join(TINY_MANU.towers))
    parser.add_argument("--scope", default=TINY_MANU.scope, help="global, tower or layer (default: the formulation's own)")
    parser.add_argument("--weights", default=None,
                        help='statistic weights as JSON, e.g. \'{"rms": 1}\' (default: the formulation\'s)')
    parser.add_argument("--forget", default="forget_10")
    parser.add_argument("--out", default="runs/manu_demo_seeds")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(TINY_MANU, formulation=args.formulation, positions=args.positions,
                     towers=tuple(args.towers.split(",")), scope=args.scope,
                     weights=json.loads(args.weights) if args.weights else TINY_MANU.weights)
    eval_config = EvalConfig(**{**TINY_EVAL.__dict__, "sets": SETS, "tasks": ("mc", "generation")})
    per_alpha: dict[float, list[dict]] = {alpha: [] for alpha in args.alphas}
    for seed in args.seeds:
        started = time.perf_counter()
        world = tiny_world(Path(args.out) / f"seed{seed}", args.forget, seed=seed)
        model, processor, adapter = tiny_vanilla(world, seed, progress=False)
        vanilla = evaluate(model, processor, adapter, world, eval_config, progress=False)
        _, report = manu_unlearn(model, processor, world.forget_train, world.retain_train,
                                 replace(config, seed=seed), adapter=adapter, progress=False)
        sites = find_sites(model, config.towers)
        for alpha in args.alphas:
            indices = select(report.stats, replace(config, alpha=alpha))
            mask = NeuronMask.from_sites(indices, sites, mode=choose_prune_mode(model, config.prune_mode))
            with mask.applied(model):
                after = evaluate(model, processor, adapter, world, eval_config, method="manu", progress=False)
            lost = drops(vanilla, after)
            per_alpha[alpha].append(lost)
            print(f"seed {seed} alpha {alpha}: {json.dumps({k: round(v, 1) for k, v in lost.items()})}", flush=True)
        scores = {"/".join((r["set"], r["task"], r["rendering"])): round(100 * r["value"], 1) for r in vanilla}
        print(f"seed {seed}: vanilla {json.dumps(scores)} ({time.perf_counter() - started:.0f} s)", flush=True)
    averages = {str(alpha): {key: round(statistics.mean(run[key] for run in runs), 2) for key in runs[0]}
                for alpha, runs in per_alpha.items()}
    print(json.dumps({"config": {**config.to_dict(), "alphas": args.alphas}, "seeds": args.seeds,
                      "drop_points": averages}))


if __name__ == "__main__":
    main()
