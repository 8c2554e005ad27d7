"""Command line: ``manu-lite demo | make-data | finetune | evaluate | unlearn`` (also ``python -m manu_lite``)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .artifacts import RunManifest
from .config import FORMULATIONS, MANU_PRUNE_MODES, POSITIONS, SCOPES, TINY_MANU, ManuConfig

DEFAULT_OUT = "runs/demo"


def _world_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="MLLMU-Bench source: the hub name MLLMMU/MLLMU-Bench or a local "
                        "directory laid out like the hub (default: the synthetic bench under --out)")
    parser.add_argument("--forget", default="forget_10", choices=["forget_5", "forget_10", "forget_15"])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"run directory (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profiles", type=int, default=None, help="synthetic fictitious profiles (tiny world)")
    parser.add_argument("--epochs", type=int, default=None, help="memorization epochs of the tiny vanilla model")
    parser.add_argument("--resume", action="store_true", help="skip the steps this run directory already completed "
                        "(their files are checked against the hashes in manifest.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manu-lite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="synthetic bench → tiny vanilla model → evaluation (tiny profile, CPU)")
    _world_args(demo)
    make = commands.add_parser("make-data", help="write a synthetic MLLMU-Bench (every config, hub layout)")
    make.add_argument("--out", required=True)
    make.add_argument("--profiles", type=int, default=None)
    make.add_argument("--celebrities", type=int, default=None)
    make.add_argument("--seed", type=int, default=0)
    finetune = commands.add_parser("finetune", help="train (or load from cache) the tiny vanilla model of a world")
    _world_args(finetune)
    evaluate = commands.add_parser("evaluate", help="evaluate a model on forget/test/retain/celebrity")
    _world_args(evaluate)
    evaluate.add_argument("--model", default="tiny", help="'tiny' or a transformers model name/path")
    evaluate.add_argument("--protocol", default="likelihood", choices=["likelihood", "likelihood_norm", "likelihood_letter", "mllmu"])
    evaluate.add_argument("--few-shot", type=int, default=1)
    unlearn = commands.add_parser("unlearn", help="MANU: score neurons on forget vs retain, prune, evaluate")
    _world_args(unlearn)
    unlearn.add_argument("--model", default="tiny", help="'tiny' or a transformers model name/path")
    # The defaults are the demo's: the setting the 3-split method table supports (config.TINY_MANU).
    defaults = TINY_MANU
    unlearn.add_argument("--alpha", type=float, default=defaults.alpha, help="percent of neurons to prune")
    unlearn.add_argument("--formulation", default=defaults.formulation, choices=FORMULATIONS,
                         help="paper: the paper's equations as written; reference: the released code's selection; "
                         "balanced: this book's modality-balanced variant")
    unlearn.add_argument("--emulate-released-defects", action="store_true",
                         help="reference only: pool statistics over layers, prune the last three layers of each tower")
    unlearn.add_argument("--positions", default=defaults.positions, choices=POSITIONS)
    unlearn.add_argument("--scope", default=defaults.scope, choices=SCOPES,
                         help="where the threshold is taken (default: the formulation's own; reference: per tower)")
    unlearn.add_argument("--towers", default=",".join(defaults.towers), help="comma-separated: language,vision")
    unlearn.add_argument("--prune-mode", default=defaults.prune_mode, choices=MANU_PRUNE_MODES)
    compare = commands.add_parser("compare", help="Vanilla, GA, GradDiff, KL, NPO and MANU on one world: tables, sweeps, "
                                  "attacks, cost, figures")
    _world_args(compare)
    compare.add_argument("--model", default="tiny", help="'tiny' or a transformers model name/path (then LoRA baselines)")
    compare.add_argument("--methods", default=None, help="comma-separated subset of vanilla,ga,graddiff,kl,npo,"
                         "manu-paper,manu-reference,manu-balanced (default: all)")
    compare.add_argument("--renderings", default="image_text", choices=["image_text", "text_only", "both"],
                         help="what the gradient baselines train on (the benchmark: image_text)")
    compare.add_argument("--steps", type=int, default=None, help="gradient baselines: optimizer steps")
    compare.add_argument("--lr", type=float, default=None, help="gradient baselines: learning rate")
    compare.add_argument("--alpha", type=float, default=None, help="MANU: percent of neurons to prune")
    compare.add_argument("--no-sweeps", action="store_true", help="skip the alpha and step sweeps")
    compare.add_argument("--no-attacks", action="store_true", help="skip relearning and membership inference")
    compare.add_argument("--retain", default=None,
                         help="hub name or path of the retain model (fine-tuned without the forget people); 'tiny' "
                              "trains its own (cached) when this is not given")
    compare.add_argument("--no-retain", action="store_true",
                         help="skip the retain model row, the distance to it and the unlearning metrics")
    compare.add_argument("--mmmu", default=None, help="MMMU source for general utility: the hub name MMMU/MMMU or "
                         "a local directory in its hub layout (default: MMMU/MMMU for hub models, none for 'tiny', "
                         "whose utility measure is the celebrity set)")
    compare.add_argument("--no-mmmu", action="store_true", help="skip MMMU")
    compare.add_argument("--mmmu-subjects", default=None, help="comma-separated MMMU subjects (default: all 30)")
    compare.add_argument("--mmmu-limit", type=int, default=None, help="at most this many MMMU questions per subject "
                         "(a seeded sample; for Colab budgets)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import workflow

    started = time.perf_counter()
    if args.command == "make-data":
        path = workflow.make_world_data(Path(args.out), profiles=args.profiles, celebrities=args.celebrities,
                                        seed=args.seed)
        print(f"wrote a synthetic MLLMU-Bench to {path}")
        return 0
    run = RunManifest(args.out, {k: v for k, v in vars(args).items() if k != "resume"}, resume=args.resume)
    world = workflow.world_for(args, run)
    if args.command == "finetune":
        workflow.tiny_vanilla(world, args.seed, epochs=args.epochs)
        print(f"tiny vanilla model ready (cache: {workflow.cache_dir()})")
        return 0
    if args.command == "compare":
        print(workflow.compare_command(world, args))
        print(f"\nwrote tables, JSON and figures to {args.out} in {time.perf_counter() - started:.0f} s")
        return 0
    if args.command == "evaluate":
        results = workflow.evaluate_model(world, args, run)
    elif args.command == "unlearn":
        config = ManuConfig(alpha=args.alpha, formulation=args.formulation, positions=args.positions,
                            emulate_released_defects=args.emulate_released_defects, scope=args.scope, towers=tuple(args.towers.split(",")),
                            prune_mode=args.prune_mode, seed=args.seed)
        results = workflow.unlearn_and_evaluate(world, args, config, run)
    else:
        results = workflow.demo(world, args, run)
    print(workflow.format_table(results))
    for line in getattr(results, "flag_lines", lambda: [])():
        print(f"WARNING: {line}")
    print(f"\nwrote {Path(args.out) / 'results.json'} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
