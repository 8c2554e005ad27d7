"""The tiny vanilla model under the four multiple-choice protocols, and under MLLMU-Bench's own protocol.

Rows: model × protocol; columns: set × rendering. ``mllmu`` is the benchmark's eval.py rule by rule (generated
letter after one few-shot profile drawn from the scored set; celebrities zero-shot), also giving its generation
ROUGE-L and cloze accuracy and how many few-shot examples had to be dropped to fit the tiny model's context.
``likelihood`` scores option text by summed log-prob (length-biased), ``likelihood_norm`` divides by the option's
length in characters (lm-evaluation-harness acc_norm), ``likelihood_letter`` shows the options and scores the
letter. The memorization gate of the vanilla run is printed for each protocol.

``--pretrain`` uses the opt-in recipe of :mod:`manu_lite.pretrain` (a base pretrained on a separate population in
the benchmark's formats, context ``--max-positions``, then the world in question → answer form); ``--base`` also
scores that base before fine-tuning and the same architecture untrained (both should be near chance on the world's
people); ``--replay`` mixes the base's format items into the world's fine-tune (``TrainConfig.replay``);
``--manu`` prunes with the demo's ``TINY_MANU`` and prints MANU's drops under ``mllmu`` and ``likelihood``.

    python benchmarks/protocol_table.py                  # forget + retain, both renderings, the default recipe
    python benchmarks/protocol_table.py --pretrain --base --manu --out runs/protocol_table_pretrain.json
    python benchmarks/protocol_table.py --pretrain --pretrain-epochs 40 --replay 1 --base --own   # the frontier
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from manu_lite.config import TINY_EVAL, TINY_MANU
from manu_lite.evaluate import evaluate
from manu_lite.finetune import TrainConfig, pretrained_base, vanilla_model
from manu_lite.manu import manu_unlearn
from manu_lite.models import PromptAdapter, TinySpec, build_tiny_llava, tokenizer_of
from manu_lite.bench import World
from manu_lite.pretrain import TASKS, PretrainConfig, population
from manu_lite.profiles import profile_world

PROTOCOLS = ("mllmu", "likelihood", "likelihood_norm", "likelihood_letter")


def scores(model, processor, adapter, world, sets, protocols, label: str, rows: dict, metas: dict, method="vanilla"):
    """Evaluate under each protocol; rows[label + protocol (+ task)][set rendering] = percent."""
    results_by_protocol = {}
    for protocol in protocols:
        tasks = ("mc", "generation", "cloze") if protocol == "mllmu" else ("mc",)
        config = replace(TINY_EVAL, mc_protocol=protocol, sets=tuple(sets), tasks=tasks)
        started = time.perf_counter()
        results = evaluate(model, processor, adapter, world, config, method=method, progress=False)
        results_by_protocol[protocol] = results
        for record in results:
            key = f"{record['set']} {'img+txt' if record['rendering'] == 'image_text' else 'text'}"
            task = protocol if record["task"] == "mc" else f"mllmu {record['task']}"
            rows.setdefault(f"{label} {task}".strip(), {})[key] = round(100 * record["value"], 1)
        metas[f"{label} {protocol}".strip()] = {
            "seconds": round(time.perf_counter() - started, 1),
            **{k: results.meta.get(k) for k in ("prompt_sha256", "dropped_shots", "memorization", "draws")}}
    return results_by_protocol


def drops(before, after) -> dict:
    """Vanilla minus MANU, in points, per set × rendering × task (positive = forgot)."""
    value = {(r["set"], r["rendering"], r["task"]): r["value"] for r in after}
    return {f"{r['set']} {'img+txt' if r['rendering'] == 'image_text' else 'text'} {r['task']}":
            round(100 * (r["value"] - value[(r["set"], r["rendering"], r["task"])]), 1)
            for r in before if (r["set"], r["rendering"], r["task"]) in value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["forget", "retain"])
    parser.add_argument("--retain-people", type=int, default=20, help="seeded retain subsample (speed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pretrain", action="store_true", help="the opt-in pretrained recipe (manu_lite.pretrain)")
    parser.add_argument("--pretrain-people", type=int, default=PretrainConfig.people)
    parser.add_argument("--pretrain-epochs", type=int, default=PretrainConfig.epochs)
    parser.add_argument("--pretrain-tasks", nargs="+", default=list(TASKS), choices=TASKS,
                        help="the formats the base learns (manu_lite.pretrain.TASKS)")
    parser.add_argument("--replay", type=float, default=0.0,
                        help="format items of the base's population mixed in per world item (TrainConfig.replay)")
    parser.add_argument("--max-positions", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="fine-tune epochs on the world")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="fine-tune learning rate on the world")
    parser.add_argument("--lora", type=int, default=0, help="fine-tune a LoRA of this rank (peft) instead of all weights")
    parser.add_argument("--base", action="store_true", help="also score the pretrained base and the untrained model")
    parser.add_argument("--manu", action="store_true", help="MANU's drops (TINY_MANU) under mllmu and likelihood")
    parser.add_argument("--own", action="store_true",
                        help="also score the pretrained base on its own (trained-on) population: can it learn the formats")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = profile_world("tiny")
    spec, pretrain = TinySpec(), None
    if args.pretrain:
        spec = TinySpec(max_positions=args.max_positions)
        pretrain = PretrainConfig(people=args.pretrain_people, epochs=args.pretrain_epochs,
                                  tasks=tuple(args.pretrain_tasks))
    started = time.perf_counter()
    # Replayed few-shot prompts are ~10x longer than the world's pairs: batch them by length, as the base is.
    buckets = PretrainConfig.length_buckets if args.replay else 1
    model, processor, adapter = vanilla_model(world, spec, TrainConfig(
        epochs=args.epochs, lr=args.lr, pretrain=pretrain, lora=args.lora > 0, lora_r=args.lora or 16,
        replay=args.replay, length_buckets=buckets))
    trained = round(time.perf_counter() - started, 1)
    scored = world.with_retain_sample(args.retain_people)
    rows, metas = {}, {}
    vanilla = scores(model, processor, adapter, scored, args.sets, PROTOCOLS, "vanilla", rows, metas)
    if args.base and pretrain is not None:
        base, base_processor = pretrained_base(spec, pretrain)
        scores(base, base_processor, adapter, scored, args.sets, ("mllmu", "likelihood"), "base", rows, metas)
        untrained = build_tiny_llava(tokenizer_of(base_processor), spec, seed=pretrain.train_seed)
        scores(untrained, base_processor, PromptAdapter("llava"), scored, args.sets, ("mllmu", "likelihood"),
               "untrained", rows, metas)
    if args.own and pretrain is not None:
        base, base_processor = pretrained_base(spec, pretrain)
        full, facts = population(pretrain)
        own = World("pretraining population", "first 5", full[:5], full[5:5 + args.retain_people], [], [], facts[:5],
                    facts[5:5 + args.retain_people])
        scores(base, base_processor, adapter, own, args.sets, ("mllmu",), "base on its own people", rows, metas)
    manu_drops = {}
    if args.manu:
        mask, _ = manu_unlearn(model, processor, world.forget_train, world.retain_train, TINY_MANU, adapter=adapter,
                               progress=False)
        with mask.applied(model):
            pruned = scores(model, processor, adapter, scored, args.sets, ("mllmu", "likelihood"), "manu", rows,
                            metas, method="manu")
        manu_drops = {protocol: drops(vanilla[protocol], pruned[protocol]) for protocol in pruned}
    import pandas as pd

    print(f"Tiny model ({'pretrained recipe' if pretrain else 'default recipe'}; vanilla trained or loaded in "
          f"{trained} s), percent (MC accuracy unless the row says otherwise)")
    print(pd.DataFrame(rows).T.to_string())
    for label, meta in metas.items():
        gate = meta["memorization"] or {}
        verdict = "" if not gate else ("; gate passed" if gate.get("passed") else
                                       "; gate FAILED: " + "; ".join(gate.get("failures", [])))
        print(f"{label}: {meta['seconds']} s{verdict}")
    dropped = {k: v for k, v in metas["vanilla mllmu"]["dropped_shots"].items() if v["drawn"]}
    print("mllmu few-shot examples kept/drawn: " + ", ".join(f"{k} {v['kept']}/{v['drawn']}" for k, v in dropped.items()))
    if manu_drops:
        print(f"MANU ({TINY_MANU.formulation}, alpha {TINY_MANU.alpha}, {'+'.join(TINY_MANU.towers)}) drops, points "
              "(vanilla - MANU):")
        print(pd.DataFrame(manu_drops).to_string())
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "meta": metas, "manu_drops": manu_drops, "pretrain": args.pretrain,
                       "train_seconds": trained}, f, indent=1)


if __name__ == "__main__":
    main()
