"""Every compare method against the retain model (the gold standard), over forget splits, with intervals.

For each forget split of the embedded tiny world (the cached vanilla model, which trained on every person; one
cached retain model per split, the vanilla recipe without that split's people, same steps), ``compare`` runs every
method without sweeps and relearning attacks, with the retain row, the field's metrics and per-question scores.
Printed, per rendering and method: distance to the retain model (mean |score − retain| over set × task, points)
and the forget and retain drops from vanilla, each as mean ± std over the splits with a 95 % percentile bootstrap
interval of that mean (seeded, paired: every model scored on the same resampled questions, each split resampled
independently; ``--unit person`` resamples people instead); forget quality (KS p-value of truth ratios), privleak
(LOSS and Min-K++), extraction strength and the collapse share as mean ± std; then the method closest to the retain
model and a paired bootstrap test of it against every other method over splits × questions. The test's only
randomness is which questions were asked: each model is one training run (one seed), and the splits are nested
(forget_5 ⊂ forget_10 ⊂ forget_15), so neither seed-to-seed nor independent-split variation is in it.

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


def run_split(split: str, out: Path, seed: int = 0, manu: str = "compare") -> dict:
    """One split: ``compare`` with the retain model, without sweeps or attacks. ``manu``: ``"compare"`` runs MANU at
    ``CompareConfig``'s defaults (``ManuConfig()``, as ``manu-lite compare`` does), ``"book"`` at the tiny
    profile's settings (``profile_manu("tiny")``, chapter 05's); each MANU row then sets its formulation."""
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
    if manu == "book":
        from dataclasses import replace

        from manu_lite.profiles import profile_manu

        config = replace(config, manu=replace(profile_manu("tiny"), seed=seed))
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
    return {"split": split, "rows": rows, "timings": timings, "questions": result.questions,
            "manu": {k: v for k, v in config.manu.__dict__.items() if k in ("alpha", "towers", "positions")}}


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bootstraps(runs: list[dict], unit: str, n_boot: int, seed: int) -> list:
    """One seeded :class:`~manu_lite.scores.Bootstrap` per split (seed + split index: independent draws)."""
    from manu_lite.scores import Bootstrap

    missing = [run["split"] for run in runs if not run.get("questions")]
    if missing:
        raise SystemExit(f"runs of {missing} carry no per-question scores (made before compare kept them); rerun "
                         "those splits")
    return [Bootstrap(run["questions"], unit=unit, n_boot=n_boot, seed=seed + i) for i, run in enumerate(runs)]


def pooled(boots: list, replicates, *args):
    """:func:`~manu_lite.scores.pooled_interval` of ``replicates(boot, *args)`` over the splits; ``None`` when a
    split did not score it."""
    from manu_lite.scores import pooled_interval

    found = [replicates(b, *args) for b in boots]
    return None if any(point is None for point, _ in found) else pooled_interval(found)


def _ci(cell: dict) -> str:
    return f"{cell['value']:5.1f} ± {cell['std']:4.1f} [{cell['low']:5.1f}, {cell['high']:5.1f}]"


def report(runs: list[dict], unit: str = "question", n_boot: int = 2000, seed: int = 0) -> str:
    """The table: per rendering and method, distance to the retain model and the forget/retain drops as mean ±
    std over splits with a 95 % percentile bootstrap interval of that mean; the field's metrics as mean ± std;
    the closest method and a paired bootstrap test of it against every other method."""
    from manu_lite.scores import distance_replicates, drop_replicates, paired_distance_test

    boots = bootstraps(runs, unit, n_boot, seed)
    methods = [m for m in runs[0]["rows"] if m != "Retain"]
    keys = ("forget_quality", "privleak_loss", "privleak_min_k_pp", "extraction", "collapse")
    lines = [f"{len(runs)} split(s): {', '.join(r['split'] for r in runs)}. Cells: mean ± std over splits "
             f"[95 % percentile bootstrap interval of that mean: {n_boot} paired resamples of the {unit}s of each "
             f"split, seed {seed}]. Distance = mean |score − retain model| over set × task; drops from vanilla; "
             "all in points."]
    settings = {json.dumps(run.get("manu", "ManuConfig() defaults (runs before --manu)")) for run in runs}
    lines.append(f"MANU settings (each MANU row sets its formulation): {'; '.join(sorted(settings))}")
    for r in RENDERINGS:
        lines.append(f"\n== {r} ==\n{'method':16s}{'distance to retain':>36s}{'forget drop':>36s}"
                     f"{'retain drop':>36s}")
        distance = {m: pooled(boots, distance_replicates, m, r) for m in methods}
        distance = {m: d for m, d in distance.items() if d}
        if not distance:
            lines.append("(not scored)")
            continue
        for m in distance:
            drops = [pooled(boots, drop_replicates, m, s, r) if m != "Vanilla" else None for s in ("forget", "retain")]
            lines.append(f"{m:16s}{_ci(distance[m]):>36s}" + "".join(f"{_ci(c) if c else '—':>36s}" for c in drops))
        lines.append(f"{'':16s}" + "".join(f"{k:>20s}" for k in keys) + "   (mean ± std over splits)")
        for m in ["Retain", *methods]:
            cells = []
            for k in keys:
                mu, sd = mean_std([run["rows"][m][r][k] for run in runs])
                cells.append(f"{'—':>20s}" if mu is None else f"{mu:>11.3g} ± {sd:<6.2g}")
            lines.append(f"{m:16s}" + "".join(cells))
        ranked = sorted(distance, key=lambda m: distance[m]["value"])
        best = ranked[0]
        lines.append(f"closest to the retain model ({r}): {best}, {_ci(distance[best])} points; per split "
                     + ", ".join(f"{run['split']} {distance_replicates(b, best, r)[0]:.1f}"
                                 for run, b in zip(runs, boots)))
        lines.append(f"paired bootstrap, {best} − other (mean over splits of the distance difference, same "
                     f"resampled {unit}s for both; H0: difference 0; two-sided p; one training run per model, so "
                     "the randomness is the questions asked, not the seed):")
        for other in ranked[1:]:
            t = paired_distance_test(boots, best, other, r)
            lines.append(f"  vs {other:14s} {t['difference']:+6.1f} [{t['low']:+6.1f}, {t['high']:+6.1f}]  p = "
                         f"{t['p']:.3g}{'  *' if t['p'] < 0.05 else ''}; {best} closer on {t['a_closer_splits']}/"
                         f"{t['splits']} splits")
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
    parser.add_argument("--unit", choices=("question", "person"), default="question",
                        help="bootstrap unit: questions of each set x rendering x task (default: forget_5 has 2 "
                             "forget people, too few to resample), or people (a cluster bootstrap)")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--manu", choices=("compare", "book"), default="compare",
                        help="MANU's settings: CompareConfig's defaults (as manu-lite compare) or the tiny profile's "
                             "(chapter 05: balanced recipe at its alpha, language tower)")
    args = parser.parse_args()
    if args.merge:
        runs = [run for path in args.merge for run in json.loads(path.read_text())]
    else:
        runs = [run_split(split, args.workdir, args.seed, args.manu) for split in args.splits]
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(runs, indent=1))
    print(report(runs, args.unit, args.n_boot, args.seed))


if __name__ == "__main__":
    main()
