"""The runs behind the command line and the notebooks: build the tiny world, train, evaluate, report.

Notebooks call these so that no logic lives in cells; each step works on the tiny profile and on real data.
"""
from __future__ import annotations

import json
from pathlib import Path

from .artifacts import RunManifest, write_json
from .config import ManuConfig
from .data import World, load_world, make_synthetic_bench
from .evaluate import EvalConfig, Results, evaluate
from .finetune import TrainConfig, cache_dir, vanilla_model
from .manu import manu_unlearn
from .prune import NeuronMask

# The embedded default world: small enough to train on two CPU cores in about a minute.
TINY_PROFILES = 50
TINY_CELEBRITIES = 10
# The tiny model was trained on bare questions, so prompts carry no task instructions; answers are short.
TINY_EVAL = EvalConfig(instructions=False, max_new_tokens=24, batch_size=64)
# MANU as the demo runs it: recall positions, modality-balanced union of per-rendering rankings, language MLPs only,
# alpha 30 (benchmarks/manu_demo_seeds.py, seeds 0-2: forget ROUGE-L -10.6 image+text / -10.1 text-only, retain and
# celebrity within 5 points; vision neurons cost celebrity image+text accuracy without adding forget selectivity).
TINY_MANU = ManuConfig(alpha=30.0, towers=("language",))

__all__ = ["cache_dir", "make_world_data", "world_for", "tiny_vanilla", "evaluate_model", "unlearn", "demo", "format_table"]


def make_world_data(out: Path, profiles: int | None = None, celebrities: int | None = None, seed: int = 0) -> Path:
    """Write the synthetic bench of the tiny world into ``out``."""
    return make_synthetic_bench(out, n_profiles=profiles or TINY_PROFILES, n_celebrities=celebrities or TINY_CELEBRITIES,
                                seed=seed)


def tiny_world(out: Path, forget: str = "forget_10", profiles: int | None = None, seed: int = 0,
               run: RunManifest | None = None) -> World:
    """The tiny world under ``out/bench``, written on first use (and recorded as a step of ``run``)."""
    bench = Path(out) / "bench"
    complete = run.done("data") if run else (bench / "Retain_Set").exists()
    if not complete:
        make_world_data(bench, profiles=profiles, seed=seed)
        if run:
            run.complete("data", sorted(bench.glob("*/*.parquet")))
    return load_world(str(bench), forget)


def world_for(args, run: RunManifest | None = None) -> World:
    """The world a command line asks for: ``--data`` if given, else the synthetic bench under ``--out``."""
    if args.data:
        return load_world(args.data, args.forget, seed=args.seed)
    return tiny_world(Path(args.out), args.forget, args.profiles, args.seed, run)


def tiny_vanilla(world: World, seed: int = 0, epochs: int | None = None, progress: bool = True):
    """The tiny vanilla model of ``world`` (cached): ``(model, processor, adapter)``."""
    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    return vanilla_model(world, config=config, progress=progress)


def evaluated(run: RunManifest | None, step: str, path: Path, evaluate_fn) -> Results:
    """The results of ``step``: read back from ``path`` when ``run`` completed it already, else computed."""
    if run is not None and run.done(step):
        print(f"resume: {step} already done, reading {path}")
        return Results(json.loads(path.read_text()))
    results = evaluate_fn()
    results.save(path)
    if run is not None:
        run.complete(step, [path])
    return results


def evaluate_model(world: World, args, run: RunManifest | None = None) -> Results:
    """``manu-lite evaluate``: the tiny vanilla model or a named checkpoint, on every set."""
    (model, processor, adapter), config = load_model(world, args)
    config = EvalConfig(**{**config.__dict__, "mc_protocol": args.protocol, "few_shot": args.few_shot})
    method = "vanilla" if args.model == "tiny" else args.model
    return evaluated(run, "evaluate", Path(args.out) / "results.json",
                     lambda: evaluate(model, processor, adapter, world, config, method=method))


def unlearn(world: World, model, processor, adapter, config: ManuConfig, out: Path, progress: bool = True):
    """Run MANU on ``world``'s forget/retain people; save the mask and the report under ``out/manu``."""
    mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, config, adapter=adapter,
                                progress=progress)
    mask.save(Path(out) / "manu")
    write_json(Path(out) / "manu" / "report.json", report.to_dict())
    return mask, report


def describe_report(report) -> str:
    towers = ", ".join(f"{t} {r['selected']}/{r['of']}" for t, r in report.selection["per_tower"].items())
    return f"MANU pruned {report.selection['selected']} neurons ({towers}) in {sum(report.timings.values()):.1f} s"


def load_model(world: World, args):
    """The model a command line names: the tiny vanilla model of ``world`` or a checkpoint by name."""
    if getattr(args, "model", "tiny") == "tiny":
        return tiny_vanilla(world, args.seed, args.epochs), TINY_EVAL
    from .models import load_mllm

    return load_mllm(args.model), EvalConfig(seed=args.seed)


def unlearn_and_evaluate(world: World, args, config: ManuConfig, run: RunManifest | None = None) -> Results:
    """``manu-lite unlearn``: MANU with ``config``; evaluates the model before and after pruning.

    Each step (vanilla evaluation, MANU, MANU evaluation) writes its files atomically and, with a ``run``
    manifest, is skipped on ``--resume`` once done.
    """
    (model, processor, adapter), eval_config = load_model(world, args)
    out = Path(args.out)
    results = evaluated(run, "evaluate-vanilla", out / "vanilla_results.json",
                        lambda: evaluate(model, processor, adapter, world, eval_config))
    if run is not None and run.done("manu"):
        print("resume: manu already done, loading its mask")
        mask = NeuronMask.load(out / "manu")
    else:
        mask, report = unlearn(world, model, processor, adapter, config, out)
        print(describe_report(report))
        if run is not None:
            run.complete("manu", [out / "manu" / name for name in ("mask.safetensors", "mask.json", "report.json")])

    def evaluate_pruned():
        with mask.applied(model):
            return evaluate(model, processor, adapter, world, eval_config, method="manu")

    results = Results(results + evaluated(run, "evaluate-manu", out / "manu_results.json", evaluate_pruned))
    results.save(out / "results.json")
    return results


def demo(world: World, args, run: RunManifest | None = None) -> Results:
    """``manu-lite demo``: the tiny vanilla model and MANU at the demo's settings, evaluated; a results figure."""
    results = unlearn_and_evaluate(world, args, ManuConfig(**{**TINY_MANU.__dict__, "seed": args.seed}), run)
    from .viz import plot_results

    plot_results(results, Path(args.out) / "results.png")
    return results


def format_table(results: Results) -> str:
    """Percentages per method, one block per set: rows = methods, columns = task × rendering."""
    table = results.table()
    blocks = []
    for set_name in dict.fromkeys(table.columns.get_level_values(0)):
        block = table[set_name]
        block.columns = [f"{task} {'img+txt' if rendering == 'image_text' else 'text'}" for task, rendering in block.columns]
        blocks.append(f"== {set_name} ==\n{block.to_string()}")
    return "\n\n".join(blocks)
