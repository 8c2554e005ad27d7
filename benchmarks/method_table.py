"""The three MANU methods side by side on the tiny world: paper, reference, balanced (and the defects emulation).

For each forget split of the embedded tiny world (one cached vanilla model; the splits ``forget_5 ⊂ forget_10 ⊂
forget_15`` are nested, as MLLMU-Bench's), MANU statistics are collected **once** and reused for every method and
alpha (selection only reads them). Each mask is evaluated on forget, a seeded retain subsample (``--retain-people``)
and celebrity, in both renderings, for MC accuracy, generation ROUGE-L and cloze accuracy. Printed: one table of
drops (vanilla − unlearned, points), mean ± std over the splits, per method and alpha; the Jaccard overlap of the
methods' neuron sets per alpha; and the released-code-defects emulation (reference, pooled statistics, last three
layers) at p = 2 (the code's default) and p = 10 (its README). The JSON of every number goes to ``--out``.

    python benchmarks/method_table.py                        # 3 splits x (3 methods x 5 alphas + 2 emulations)
    python benchmarks/method_table.py --splits forget_10 --alphas 10   # one quick point
    # the same, one process per split (small models use threads poorly), then merged:
    for s in forget_5 forget_10 forget_15; do
        python benchmarks/method_table.py --threads 1 --splits $s --out runs/method_table_$s.json & done; wait
    python benchmarks/method_table.py --merge runs/method_table_forget_*.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from manu_demo_seeds import drops  # noqa: E402  (the same vanilla − unlearned drops as the demo benchmark)

from manu_lite.config import TINY_EVAL, ManuConfig  # noqa: E402
from manu_lite.evaluate import EvalConfig, evaluate  # noqa: E402
from manu_lite.hooks import find_sites  # noqa: E402
from manu_lite.importance import select  # noqa: E402
from manu_lite.manu import choose_prune_mode, manu_unlearn  # noqa: E402
from manu_lite.profiles import profile_world, tiny_vanilla  # noqa: E402
from manu_lite.prune import NeuronMask  # noqa: E402
from manu_lite.released import output_sites, select_released  # noqa: E402

METHODS = ("paper", "reference", "balanced")
SETS = ("forget", "retain", "celebrity")


def neuron_set(indices) -> set:
    return {(name, int(i)) for name, idx in indices.items() for i in idx.tolist()}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", nargs="+", default=["forget_5", "forget_10", "forget_15"])
    parser.add_argument("--alphas", type=float, nargs="+", default=[2, 5, 10, 20, 30])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--towers", default="language,vision", help="towers scored by every method")
    parser.add_argument("--defect-alphas", type=float, nargs="*", default=[2, 10])
    parser.add_argument("--extra", nargs="*", default=[],
                        help="extra rows as name=JSON ManuConfig overrides, e.g. "
                             "'balanced-language={\"formulation\": \"balanced\", \"towers\": [\"language\"]}'")
    parser.add_argument("--retain-people", type=int, default=10, help="seeded retain subsample (None = all)")
    parser.add_argument("--out", default="runs/method_table.json")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="only merge the JSON of several runs (e.g. one per split, run in parallel) and print")
    args = parser.parse_args()
    if args.merge:
        print(table(merge([json.loads(Path(p).read_text()) for p in args.merge])))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    towers = tuple(args.towers.split(","))
    rows: dict[str, ManuConfig] = {m: ManuConfig(formulation=m, towers=towers) for m in args.methods}
    for spec in args.extra:
        name, overrides = spec.split("=", 1)
        overrides = json.loads(overrides)
        if "towers" in overrides:
            overrides["towers"] = tuple(overrides["towers"])
        rows[name] = ManuConfig(**{"towers": towers, **overrides})
    grid = [(name, a) for name in rows for a in args.alphas]
    defects = ManuConfig(formulation="reference", towers=towers, emulate_released_defects=True)
    grid += [("reference-defects", a) for a in args.defect_alphas]
    configs = {**rows, "reference-defects": defects}
    evaluation = EvalConfig(**{**TINY_EVAL.__dict__, "sets": SETS})
    results: dict = {"splits": args.splits, "retain_people": args.retain_people, "towers": towers,
                     "configs": {k: v.to_dict() for k, v in configs.items()}, "drops": {}, "jaccard": {},
                     "selected": {}}
    for split in args.splits:
        started = time.perf_counter()
        world = profile_world("tiny", forget=split).with_retain_sample(args.retain_people)
        # One vanilla model for every split: it memorizes every person (finetune.vanilla_records, sorted), so the
        # splits' models are the same training; load the cached one under the default split's key.
        model, processor, adapter = tiny_vanilla(profile_world("tiny", forget="forget_10"), 0, progress=False)
        vanilla = evaluate(model, processor, adapter, world, evaluation, progress=False)
        results["vanilla"] = Path(getattr(model.config, "_name_or_path", "")).name  # the cache entry: which recipe
        # One statistics pass over all towers, reused by every method and alpha.
        _, report = manu_unlearn(model, processor, world.forget_train, world.retain_train,
                                 ManuConfig(towers=towers), adapter=adapter, progress=False)
        # The defects emulation records projection outputs: its own statistics pass, reused for its alphas.
        _, defect_report = manu_unlearn(model, processor, world.forget_train, world.retain_train, defects,
                                        adapter=adapter, progress=False)
        sites = {s.name: s for s in find_sites(model, towers)}
        recorded = output_sites(model, list(sites.values()))
        chosen = {}
        for name, alpha in grid:
            config = replace(configs[name], alpha=alpha)
            if config.emulate_released_defects:  # neurons (rows of gate/up/fc1) + residual channels (down/fc2)
                indices, channels = select_released(defect_report.stats, recorded, config)
            else:
                indices, channels = select(report.stats, config), {}
            chosen[(name, alpha)] = neuron_set(indices)
            used = [sites[n] for n in {*indices, *channels}]
            mode = choose_prune_mode(model, config.prune_mode)
            mask = NeuronMask.from_sites(indices, used, mode=mode, channels=channels)
            with mask.applied(model):
                after = evaluate(model, processor, adapter, world, evaluation, method="manu", progress=False)
            key = f"{name} a={alpha:g}"
            results["drops"].setdefault(key, []).append(drops(vanilla, after))
            results["selected"].setdefault(key, []).append(len(chosen[(name, alpha)]))
            print(f"{split} {key}: {len(chosen[(name, alpha)])} neurons "
                  f"{json.dumps({k: round(v, 1) for k, v in results['drops'][key][-1].items()})}", flush=True)
        for alpha in args.alphas:
            for a, b in itertools.combinations(rows, 2):
                results["jaccard"].setdefault(f"{a}|{b} a={alpha:g}", []).append(
                    jaccard(chosen[(a, alpha)], chosen[(b, alpha)]))
        for alpha in args.defect_alphas:
            if ("reference", alpha) in chosen:
                results["jaccard"].setdefault(f"reference|reference-defects a={alpha:g}", []).append(
                    jaccard(chosen[("reference", alpha)], chosen[("reference-defects", alpha)]))
        print(f"{split}: done in {time.perf_counter() - started:.0f} s", flush=True)
        results["splits_done"] = results.get("splits_done", []) + [split]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))  # after every split: partial runs are usable
        print(table(results), flush=True)


def merge(runs: list[dict]) -> dict:
    """One result from runs over different splits (same grid): per-split lists concatenated."""
    out = {**runs[0], "splits": [s for r in runs for s in r["splits"]]}
    for field in ("drops", "jaccard", "selected"):
        out[field] = {k: [v for r in runs for v in r[field].get(k, [])] for k in runs[0][field]}
    return out


def table(results: dict) -> str:
    """Markdown: one row per (method, alpha), columns set/task/rendering drops as mean ± std over splits."""
    first = next(iter(results["drops"].values()))[0]
    columns = sorted(first, key=lambda k: (SETS.index(k.split("/")[0]), k))
    short = {"image_text": "it", "text_only": "to", "generation": "rouge"}
    head = ["method α", "n"] + ["/".join(short.get(p, p) for p in c.split("/")) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, runs in results["drops"].items():
        n = round(statistics.mean(results["selected"][key]))
        cells = [f"{m:+.1f}±{s:.1f}" for m, s in (mean_std([r[c] for r in runs]) for c in columns)]
        lines.append(f"| {key} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "| Jaccard | mean ± std |", "|---|---|"]
    lines += [f"| {k} | {m:.3f}±{s:.3f} |" for k, (m, s) in ((k, mean_std(v)) for k, v in results["jaccard"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
