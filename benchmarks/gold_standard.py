"""Every compare method against the retain model (the gold standard), over forget splits, mean ± std.

For each forget split of the embedded tiny world (one cached vanilla model, which trained on every person; one
cached retain model per split, the vanilla recipe without that split's people, same steps), ``compare`` runs every
method without sweeps and relearning attacks, with the retain row and the field's metrics. Printed, per method and
rendering, mean ± std over the splits of: distance to the retain model (mean |score − retain| over set × task,
points), forget quality (KS p-value of truth ratios), privleak (LOSS and Min-K++), extraction strength and the
collapse share; then, per rendering, the method closest to the retain model (lowest mean distance) and whether the
runner-up's distances overlap it (a paired sign count over the splits — with 3 splits no test can be significant
at 5 %, which the output says).

    python benchmarks/gold_standard.py                          # forget_5, forget_10, forget_15
    python benchmarks/gold_standard.py --splits forget_10 --out runs/gold_forget_10.json
    python benchmarks/gold_standard.py --merge runs/gold_forget_*.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RENDERINGS = ("image_text", "text_only")


def run_split(split: str, out: Path, seed: int = 0) -> dict:
    from manu_lite.attacks import unseen_people
    from manu_lite.compare import CompareConfig, compare
    from manu_lite.profiles import profile_world, tiny_retain, tiny_vanilla

    world = profile_world("tiny", split)
    timings = {}
    start = time.perf_counter()
    vanilla, processor, adapter = tiny_vanilla(world, seed, progress=False)
    timings["vanilla"] = time.perf_counter() - start
    start = time.perf_counter()
    retain = tiny_retain(world, seed, progress=False)
    timings["retain model"] = time.perf_counter() - start
    config = CompareConfig(sweeps=False, attacks=False, seed=seed)
    holdout = unseen_people(world, out, config.mia_people, seed + 1)
    start = time.perf_counter()
    result = compare(vanilla, processor, adapter, world, out / split, config, holdout=holdout, progress=False,
                     retain=retain)
    timings["compare"] = time.perf_counter() - start
    rows = {}
    for method, row in result.summary["methods"].items():
        cell = {}
        for r in RENDERINGS:
            vs, un = row.get("vs_retain", {}).get(r, {}), row.get("unlearning", {}).get(r, {})
            cell[r] = {"distance": row.get("distance_to_retain", {}).get(r),
                       "forget_quality": vs.get("forget_quality"),
                       "privleak_loss": vs.get("privleak", {}).get("loss"),
                       "privleak_min_k_pp": vs.get("privleak", {}).get("min_k_pp"),
                       "extraction": un.get("extraction_strength"),
                       "collapse": un.get("collapse", {}).get("share")}
        rows[method] = cell
    return {"split": split, "rows": rows, "timings": timings}


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(runs: list[dict]) -> str:
    methods = list(runs[0]["rows"])
    keys = ("distance", "forget_quality", "privleak_loss", "privleak_min_k_pp", "extraction", "collapse")
    lines = [f"{len(runs)} split(s): {', '.join(r['split'] for r in runs)}; mean ± std over splits"]
    for r in RENDERINGS:
        lines.append(f"\n== {r} ==\n{'method':16s}" + "".join(f"{k:>22s}" for k in keys))
        for m in methods:
            cells = []
            for k in keys:
                mu, sd = mean_std([run["rows"][m][r][k] for run in runs])
                cells.append(f"{'—':>22s}" if mu is None else f"{mu:>13.3g} ± {sd:<6.2g}")
            lines.append(f"{m:16s}" + "".join(cells))
        ranked = sorted((mean_std([run["rows"][m][r]["distance"] for run in runs])[0], m)
                        for m in methods if m != "Retain")
        (d1, best), (d2, second) = ranked[0], ranked[1]
        wins = sum(run["rows"][best][r]["distance"] < run["rows"][second][r]["distance"] for run in runs)
        lines.append(f"closest to the retain model ({r}): {best} ({d1:.1f} points), runner-up {second} ({d2:.1f}); "
                     f"{best} closer on {wins}/{len(runs)} splits (sign test p = {0.5 ** len(runs) * 2:.2f} at best "
                     f"two-sided for {len(runs)} splits)")
    for run in runs:
        lines.append(f"timings {run['split']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in run["timings"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", nargs="+", default=["forget_5", "forget_10", "forget_15"])
    parser.add_argument("--workdir", type=Path, default=Path("runs/gold_standard"))
    parser.add_argument("--out", type=Path, default=None, help="JSON of every run")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, help="merge JSON files of earlier runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.merge:
        runs = [run for path in args.merge for run in json.loads(path.read_text())]
    else:
        runs = [run_split(split, args.workdir, args.seed) for split in args.splits]
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(runs, indent=1))
    print(report(runs))


if __name__ == "__main__":
    main()
