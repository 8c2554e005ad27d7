"""What evaluating a retain *sample* instead of the full retain set changes, per method, on one forget split.

Chapter 05 passes ``world.with_retain_sample(10)`` to ``compare`` to stay within the book's time budget: every
method still unlearns with all retain people (``with_retain_sample`` keeps ``retain_train``), but the retain set is
scored on 10 of them. Evaluation is per question, so the sample's scores are its people's questions of a full-set
run. This script takes every method's per-question scores on the full retain set (a ``gold_standard.py`` run of
the split, ``--run``, or a fresh one) and prints, side by side per method and rendering: the retain drop from
vanilla and the distance to the retain model with the full set and with the sample, and their difference. Then,
over ``--seeds`` other samples of the same size, the spread of that difference (how lucky the book's draw is).
One direct check keeps the shortcut honest: the vanilla model is evaluated on the sampled world itself and its
retain scores compared with the full run's questions of the same people.

    python benchmarks/retain_subsample.py --run runs/gold_forget_10.json    # the book's split, 10 people, seed 0
    python benchmarks/retain_subsample.py --split forget_10 --people 10     # runs compare first (slow)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from pathlib import Path

RENDERINGS = ("image_text", "text_only")


def full_run(args) -> dict:
    """The split's gold-standard run (per-question scores of every method on the full world)."""
    if args.run:
        runs = [run for run in json.loads(args.run.read_text()) if run["split"] == args.split]
        if not runs or not runs[0].get("questions"):
            raise SystemExit(f"{args.run} holds no run of {args.split} with per-question scores; run "
                             f"benchmarks/gold_standard.py --splits {args.split} --out {args.run}")
        return runs[0]
    spec = importlib.util.spec_from_file_location("gold_standard", Path(__file__).with_name("gold_standard.py"))
    gold = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gold)
    return gold.run_split(args.split, args.workdir, args.seed)


def with_sample(questions: list[dict], people: set) -> list[dict]:
    """The questions with the retain set restricted to ``people`` (every other set unchanged)."""
    return [q for q in questions if q["set"] != "retain" or q["id"] in people]


def effects(questions: list[dict], people: set) -> dict:
    """Per method and rendering: retain drop and distance to the retain model, full set vs sample (points)."""
    from manu_lite.scores import distance_to_retain, drops, question_results

    full, sample = question_results(questions), question_results(with_sample(questions, people))
    methods = list(dict.fromkeys(q["method"] for q in questions))
    out = {}
    for m in methods:
        d_full, d_sample = drops(full, method=m)[m], drops(sample, method=m)[m]
        far_full = distance_to_retain(full, m) if m != "Retain" else {}
        far_sample = distance_to_retain(sample, m) if m != "Retain" else {}
        out[m] = {r: {"retain_drop": (d_full["retain"][r], d_sample["retain"][r]),
                      "distance": (far_full.get(r), far_sample.get(r))} for r in RENDERINGS}
    return out


def direct_check(split: str, people: int, sample_seed: int, questions: list[dict], seed: int = 0) -> tuple:
    """The vanilla's retain questions of the sample, evaluated on the sampled world vs taken from the full run:
    ``(max |difference| in points, questions that differ, questions)``."""
    from manu_lite.compare import CompareConfig
    from manu_lite.evaluate import evaluate
    from manu_lite.profiles import profile_world, tiny_vanilla
    from manu_lite.scores import question_records

    world = profile_world("tiny", split)
    sample = world.with_retain_sample(people, sample_seed)
    model, processor, adapter = tiny_vanilla(world, seed=seed, progress=False)
    config = CompareConfig().evaluation
    details = {}
    evaluate(model, processor, adapter, sample, type(config)(**{**config.__dict__, "sets": ("retain",)}),
             method="Vanilla", progress=False, details=details)
    direct = question_records(details, "Vanilla")
    kept = {r.id for r in sample.retain}
    shortcut = [q for q in questions if q["method"] == "Vanilla" and q["set"] == "retain" and q["id"] in kept]

    def by_person(rows):  # each person's questions of a rendering and task, in evaluation order
        out = {}
        for q in rows:
            out.setdefault((q["rendering"], q["task"], q["id"]), []).append(q["value"])
        return out

    direct, shortcut = by_person(direct), by_person(shortcut)
    if direct.keys() != shortcut.keys() or any(len(direct[k]) != len(shortcut[k]) for k in direct):
        raise SystemExit("the sampled world's retain questions differ from the full run's questions of the same "
                         "people: the shortcut does not hold")
    gaps = [abs(a - b) for k in direct for a, b in zip(direct[k], shortcut[k])]
    return 100 * max(gaps), sum(g > 1e-9 for g in gaps), len(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="forget_10", help="the book's split (chapter 05)")
    parser.add_argument("--people", type=int, default=10, help="retain people in the sample (chapter 05: 10)")
    parser.add_argument("--sample-seed", type=int, default=0, help="the sample's seed (chapter 05: 0)")
    parser.add_argument("--seeds", type=int, default=50, help="other samples, for the spread of the difference")
    parser.add_argument("--run", type=Path, default=None, help="a gold_standard.py JSON holding the split")
    parser.add_argument("--workdir", type=Path, default=Path("runs/retain_subsample"))
    parser.add_argument("--seed", type=int, default=0, help="training and compare seed of a fresh run")
    parser.add_argument("--no-check", action="store_true", help="skip the direct evaluation of the sample")
    args = parser.parse_args()
    import random

    from manu_lite.profiles import profile_world

    run = full_run(args)
    questions = run["questions"]
    world = profile_world("tiny", args.split)
    everyone = [r.id for r in world.retain]
    book = {r.id for r in world.with_retain_sample(args.people, args.sample_seed).retain}
    result = effects(questions, book)
    print(f"{args.split}: retain set {len(everyone)} people vs a sample of {len(book)} (seed {args.sample_seed}); "
          "points; full → sample (sample − full)")
    print(f"{'method':16s}{'rendering':12s}{'retain drop':>30s}{'distance to retain':>30s}")
    for m, per in result.items():
        for r, cell in per.items():
            texts = []
            for name in ("retain_drop", "distance"):
                full, sample = cell[name]
                texts.append("—" if full is None else f"{full:6.1f} → {sample:6.1f} ({sample - full:+5.1f})")
            print(f"{m:16s}{r:12s}{texts[0]:>30s}{texts[1]:>30s}")
    spread = {}
    for k in range(args.seeds):
        people = set(random.Random(1000 + k).sample(everyone, args.people))
        for m, per in effects(questions, people).items():
            for r, cell in per.items():
                for name, (full, sample) in cell.items():
                    if full is not None:
                        spread.setdefault((m, r, name), []).append(sample - full)
    print(f"\nover {args.seeds} other samples of {args.people} people: sample − full, mean ± std [max |·|]")
    for (m, r, name), diffs in spread.items():
        print(f"{m:16s}{r:12s}{name:14s}{statistics.mean(diffs):+6.2f} ± {statistics.stdev(diffs):5.2f} "
              f"[{max(map(abs, diffs)):5.2f}]")
    if not args.no_check:
        gap, differ, n = direct_check(args.split, args.people, args.sample_seed, questions, args.seed)
        print(f"\ndirect check: the vanilla evaluated on the sampled world vs the full run's questions of the same "
              f"people: {differ} of {n} questions differ, max |difference| {gap:.3g} points")


if __name__ == "__main__":
    main()
