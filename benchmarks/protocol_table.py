"""The tiny vanilla model under the four multiple-choice protocols, and under MLLMU-Bench's own protocol.

Rows: protocol; columns: set × rendering. ``mllmu`` is the benchmark's eval.py rule by rule (generated letter after
one few-shot profile drawn from the scored set; celebrities zero-shot), also giving its generation ROUGE-L and
cloze accuracy and how many few-shot examples had to be dropped to fit the tiny model's context.
``likelihood`` scores option text by summed log-prob (length-biased), ``likelihood_norm`` divides by the option's
length in characters (lm-evaluation-harness acc_norm), ``likelihood_letter`` shows the options and scores the
letter. The memorization gate of the vanilla run is printed for each protocol.

    python benchmarks/protocol_table.py                  # forget + retain, both renderings
    python benchmarks/protocol_table.py --sets forget retain celebrity --out runs/protocol_table.json
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from manu_lite.config import TINY_EVAL
from manu_lite.evaluate import evaluate
from manu_lite.profiles import profile_world, tiny_vanilla

PROTOCOLS = ("mllmu", "likelihood", "likelihood_norm", "likelihood_letter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["forget", "retain"])
    parser.add_argument("--retain-people", type=int, default=20, help="seeded retain subsample (speed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = profile_world("tiny")
    model, processor, adapter = tiny_vanilla(world, 0, progress=False)
    world = world.with_retain_sample(args.retain_people)
    rows, metas = {}, {}
    for protocol in PROTOCOLS:
        tasks = ("mc", "generation", "cloze") if protocol == "mllmu" else ("mc",)
        config = replace(TINY_EVAL, mc_protocol=protocol, sets=tuple(args.sets), tasks=tasks)
        started = time.perf_counter()
        results = evaluate(model, processor, adapter, world, config, progress=False)
        for record in results:
            key = f"{record['set']} {'img+txt' if record['rendering'] == 'image_text' else 'text'}"
            label = protocol if record["task"] == "mc" else f"mllmu {record['task']}"
            rows.setdefault(label, {})[key] = round(100 * record["value"], 1)
        metas[protocol] = {"seconds": round(time.perf_counter() - started, 1),
                           **{k: results.meta.get(k) for k in ("prompt_sha256", "dropped_shots", "memorization",
                                                                 "draws")}}
    import pandas as pd

    print("Tiny vanilla, percent (MC accuracy unless the row says otherwise)")
    print(pd.DataFrame(rows).T.to_string())
    for protocol, meta in metas.items():
        gate = meta["memorization"] or {}
        print(f"{protocol}: {meta['seconds']} s; memorization gate "
              f"{'passed' if gate.get('passed') else 'FAILED: ' + '; '.join(gate.get('failures', []))}")
    dropped = {k: v for k, v in metas["mllmu"]["dropped_shots"].items() if v["drawn"]}
    print("mllmu few-shot examples kept/drawn: " + ", ".join(f"{k} {v['kept']}/{v['drawn']}" for k, v in dropped.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "meta": metas}, f, indent=1)


if __name__ == "__main__":
    main()
