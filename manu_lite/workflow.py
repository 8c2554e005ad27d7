"""The runs behind the command line and the notebooks: build the tiny world, train, evaluate, report.

Notebooks call these so that no logic lives in cells; each step works on the tiny profile and on real data.
"""
from __future__ import annotations

import json
from pathlib import Path

from dataclasses import replace

from .artifacts import RunManifest, write_json
from .bench import World, load_world
from .config import TINY_EVAL, TINY_MANU, EvalConfig, ManuConfig
from .evaluate import Results, evaluate
from .finetune import cache_dir
from .manu import manu_unlearn
from .profiles import load_model as load_named_model
from .profiles import make_world_data, tiny_vanilla, tiny_world
from .prune import NeuronMask

__all__ = ["cache_dir", "make_world_data", "world_for", "tiny_vanilla", "evaluate_model", "unlearn", "demo",
           "compare_command", "format_table"]


def world_for(args, run: RunManifest | None = None) -> World:
    """The world a command line asks for: ``--data`` if given, else the synthetic bench under ``--out``."""
    if args.data:
        return load_world(args.data, args.forget, seed=args.seed)
    return tiny_world(Path(args.out), args.forget, args.profiles, args.seed, run)


def evaluated(run: RunManifest | None, step: str, path: Path, evaluate_fn) -> Results:
    """The results of ``step``: read back from ``path`` when ``run`` completed it already, else computed."""
    if run is not None and run.done(step):
        print(f"resume: {step} already done, reading {path}")
        results = Results(json.loads(path.read_text()))
        meta = path.with_suffix(".meta.json")
        if meta.exists():
            results.meta = json.loads(meta.read_text())
        return results
    results = evaluate_fn()
    results.save(path)
    if run is not None:
        # the meta (seeded draws, prompt hash, dropped few-shot examples, memorization gate) is part of the step
        meta = path.with_suffix(".meta.json")
        info = {k: results.meta[k] for k in ("protocol", "seed", "prompt_sha256", "dropped_shots_total", "draws")
                if k in getattr(results, "meta", {})}
        run.complete(step, [path] + ([meta] if meta.exists() else []), **info)
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
    """The model a command line names and its evaluation settings: the tiny vanilla model of ``world`` or a
    checkpoint by name, loaded as the notebooks load it (:func:`manu_lite.profiles.load_model`)."""
    name = getattr(args, "model", "tiny")
    model = load_named_model(name, world, seed=args.seed, epochs=args.epochs)
    return model, (TINY_EVAL if name == "tiny" else EvalConfig(seed=args.seed))


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


def compare_command(world: World, args) -> str:
    """``manu-lite compare``: load the vanilla model, run :func:`compare` under ``args.out``, return a report."""
    from .attacks import unseen_people
    from .compare import CompareConfig, compare
    from .report import RENDERING_NAMES, summary_table

    config = CompareConfig(seed=args.seed)
    (vanilla, processor, adapter), evaluation = load_model(world, args)
    if args.model == "tiny":
        # Never-seen people for membership inference: a separately seeded synthetic bench.
        holdout = unseen_people(world, Path(args.out), config.mia_people, args.seed + 1) if args.data is None else None
    else:
        config = replace(config, unlearn=replace(config.unlearn, lora=True), evaluation=evaluation,
                         manu_batch_size=4)
        holdout = None
    unlearn_knobs = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    config = replace(config, unlearn=replace(config.unlearn, renderings=args.renderings, seed=args.seed, **unlearn_knobs),
                     manu=replace(config.manu, seed=args.seed, **({"alpha": args.alpha} if args.alpha else {})),
                     sweeps=not args.no_sweeps, attacks=not args.no_attacks,
                     **({"methods": tuple(args.methods.split(","))} if args.methods else {}))
    retain, retain_note = None, None
    if not getattr(args, "no_retain", False):
        from .profiles import load_retain_model

        if args.model == "tiny" or getattr(args, "retain", None):
            retain = load_retain_model(args.model, world, retain=getattr(args, "retain", None), seed=args.seed,
                                       epochs=args.epochs)
        else:
            retain_note = "retain model skipped: pass --retain <checkpoint fine-tuned without the forget people>"
    result = compare(vanilla, processor, adapter, world, args.out, config, holdout=holdout, retain=retain)
    lines = [format_table(result.results), "", "== summary (drops in points from vanilla, mean of tasks) ==",
             summary_table(result.summary).to_string()]
    for scope, best in result.summary["best_at_5_points_retain"].items():
        for rendering, row in best.items():
            lines.append(f"best forget drop at <= 5 points retain drop, {RENDERING_NAMES[rendering]} ({scope}): "
                         f"{row['label']} forget -{row['forget_drop']:.1f} (other rendering -"
                         f"{row['other_rendering_forget_drop']:.1f}), retain -{row['retain_drop']:.1f} "
                         f"(other rendering -{row['other_rendering_retain_drop']:.1f})")
    for rendering, row in result.summary.get("closest_to_retain", {}).items():
        lines.append(f"closest to the retain model, {RENDERING_NAMES[rendering]}: {row['label']} "
                     f"(mean |score − retain| {row['distance']:.1f} points over set × task)")
    if retain_note:
        lines.append(retain_note)
    if holdout is None and config.attacks:
        lines.append("membership inference skipped: no never-seen people for this world (synthetic worlds only)")
    return "\n".join(lines)


def format_table(results: Results) -> str:
    """Percentages per method, one block per set: rows = methods, columns = task × rendering."""
    table = results.table()
    blocks = []
    for set_name in dict.fromkeys(table.columns.get_level_values(0)):
        block = table[set_name]
        block.columns = [f"{task} {'img+txt' if rendering == 'image_text' else 'text'}" for task, rendering in block.columns]
        blocks.append(f"== {set_name} ==\n{block.to_string()}")
    return "\n\n".join(blocks)
