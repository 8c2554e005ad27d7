"""The runs behind the command line and the notebooks: build the tiny world, train, evaluate, report.

Notebooks call these so that no logic lives in cells; each step works on the tiny profile and on real data.
"""
from __future__ import annotations

import json
from pathlib import Path

from dataclasses import replace

from .artifacts import RunManifest, write_json
from .baselines import UnlearnConfig
from .bench import World, load_world
from .config import TINY_EVAL, TINY_MANU, EvalConfig, ManuConfig
from .evaluate import Results, evaluate
from .finetune import cache_dir
from .manu import manu_unlearn
from .profiles import load_model as load_named_model
from .profiles import for_hub_model, make_world_data, tiny_vanilla, tiny_world
from .prune import NeuronMask

__all__ = ["cache_dir", "make_world_data", "world_for", "tiny_vanilla", "evaluate_model", "unlearn", "demo",
           "compare_command", "format_table", "benchmark_split", "full_benchmark", "benchmark_tables"]


def world_for(args, run: RunManifest | None = None) -> World:
    """The world a command line asks for: ``--data`` if given, else the synthetic bench under ``--out``."""
    if args.data:
        return load_world(args.data, args.forget, seed=args.seed)
    return tiny_world(Path(args.out), args.forget, args.profiles, args.seed, run)


def _read_results(path: Path) -> Results:
    """Records saved by :meth:`Results.save`, with their meta when it was saved beside them."""
    results = Results(json.loads(Path(path).read_text()))
    meta = Path(path).with_suffix(".meta.json")
    if meta.exists():
        results.meta = json.loads(meta.read_text())
    return results


def evaluated(run: RunManifest | None, step: str, path: Path, evaluate_fn) -> Results:
    """The results of ``step``: read back from ``path`` when ``run`` completed it already, else computed."""
    if run is not None and run.done(step):
        print(f"resume: {step} already done, reading {path}")
        return _read_results(path)
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
        config = replace(for_hub_model(config), evaluation=evaluation)
        holdout = None
    unlearn_knobs = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    config = replace(config, unlearn=replace(config.unlearn, renderings=args.renderings, seed=args.seed, **unlearn_knobs),
                     manu=replace(config.manu, seed=args.seed, **({"alpha": args.alpha} if args.alpha else {})),
                     sweeps=not args.no_sweeps, attacks=not args.no_attacks,
                     **({"methods": tuple(args.methods.split(","))} if args.methods else {}))
    from .mmmu import MMMUConfig

    mmmu = None if args.no_mmmu else args.mmmu or (None if args.model == "tiny" else "MMMU/MMMU")
    config = replace(config, mmmu_source=mmmu, mmmu=MMMUConfig(
        subjects=tuple(args.mmmu_subjects.split(",")) if args.mmmu_subjects else None, limit=args.mmmu_limit))
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
    if len(result.mmmu):
        lines += ["", "== MMMU (general utility), accuracy % ==",
                  result.mmmu.table()["mmmu"].droplevel("rendering", axis=1).to_string()]
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


# ------------------------------------------------------------------------------- chapter 06: the full benchmark
def _scored(steps, label: str, method: str, model, processor, adapter, world: World, evaluation: EvalConfig,
            mmmu=None, mmmu_config=None) -> tuple[Results, Results]:
    """Steps ``evaluate-<label>`` (MLLMU-Bench) and, with ``mmmu`` data, ``mmmu-<label>``, on ``model`` as it is."""
    from .mmmu import evaluate_mmmu

    def scored(name, fn):
        path = steps.out / label / f"{name}.json"

        def compute():
            results = fn()
            results.save(path)
            return results

        return steps.step(f"{name}-{label}", [path], compute, lambda: _read_results(path))

    bench = scored("evaluate", lambda: evaluate(model, processor, adapter, world, evaluation, method=method,
                                                progress=False))
    utility = scored("mmmu", lambda: evaluate_mmmu(model, processor, adapter, mmmu, mmmu_config, method=method)) \
        if mmmu is not None else Results()
    return bench, utility


def benchmark_split(steps, model, processor, adapter, world: World, *, methods=("manu",), manu: ManuConfig,
                    unlearn_config=None, evaluation: EvalConfig, mmmu=None, mmmu_config=None, batch_size: int = 16,
                    retain_stats: int | None = None, model_id: str = "") -> tuple[Results, Results]:
    """Chapter 06 on one loaded model and one world, as resumable measured steps of ``steps``
    (:class:`manu_lite.steps.StepRun`): the vanilla model's evaluation, then per method its unlearning and its
    evaluation, each followed by MMMU when ``mmmu`` (an :class:`manu_lite.mmmu.MMMUData`) is given.

    methods: ``"manu"`` (statistics on the forget people and ``retain_stats`` retain people, every
             ``(dataset, rendering)`` table saved under ``manu/stats``, the mask under ``manu/mask``, then the
             model evaluated with the mask applied) and the baselines ``"ga" | "graddiff" | "kl" | "npo"``
             (LoRA adapters trained on the one loaded model and saved under ``<method>/adapter.safetensors``,
             evaluated with the adapters active, removed afterwards: no copy of the model).
    Returns the MLLMU-Bench records and the MMMU records (empty without ``mmmu``), methods labelled
    ``Vanilla``, ``MANU``, ``GA`` … (:data:`manu_lite.compare.LABELS`).
    """
    from safetensors.torch import load_file, save_file

    from .artifacts import atomic_path
    from .baselines import METHODS as BASELINES
    from .baselines import lora_adapters, unlearn_with
    from .compare import LABELS
    from .steps import free_memory

    unknown = [m for m in methods if m != "manu" and m not in BASELINES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from manu, {', '.join(BASELINES)}")
    unlearn_config = replace(unlearn_config or UnlearnConfig(), lora=True)
    out = steps.out
    bench, utility = _scored(steps, "vanilla", "Vanilla", model, processor, adapter, world, evaluation, mmmu,
                             mmmu_config)
    for method in methods:
        if method == "manu":
            retain = world.retain_train
            if retain_stats is not None and len(retain) > retain_stats:
                retain = retain[:: max(1, len(retain) // retain_stats)][:retain_stats]
            files = [out / "manu" / "mask" / n for n in ("mask.safetensors", "mask.json")] + \
                [out / "manu" / "stats" / f"{d}_{r}.safetensors" for d in ("forget", "retain")
                 for r in ("image_text", "text_only")] + [out / "manu" / "report.json"]

            def compute(retain=retain):
                mask, report = manu_unlearn(model, processor, world.forget_train, retain, manu, adapter=adapter,
                                            batch_size=batch_size, progress=False, model_id=model_id)
                for (dataset, rendering), table in report.stats.items():  # StatsTable.load reads them back
                    table.save(out / "manu" / "stats" / f"{dataset}_{rendering}.safetensors")
                write_json(out / "manu" / "report.json", report.to_dict())
                mask.save(out / "manu" / "mask")
                return mask

            mask = steps.step("manu", files, compute, lambda: NeuronMask.load(out / "manu" / "mask"))
            with mask.applied(model):
                scores = _scored(steps, "manu", LABELS[f"manu-{manu.formulation}"], model, processor, adapter,
                                 world, evaluation, mmmu, mmmu_config)
        else:
            path = out / method / "adapter.safetensors"
            with lora_adapters(model, unlearn_config.lora_r, unlearn_config.seed) as network:
                def train(network=network, method=method, path=path):
                    from peft import get_peft_model_state_dict

                    unlearn_with(method, network, processor, adapter, world, unlearn_config, progress=False)
                    with atomic_path(path) as tmp:
                        save_file({k: v.detach().cpu().contiguous()
                                   for k, v in get_peft_model_state_dict(network).items()}, tmp)

                def reload(network=network, path=path):
                    from peft import set_peft_model_state_dict

                    set_peft_model_state_dict(network, load_file(str(path)))

                steps.step(f"unlearn-{method}", [path], train, reload)
                scores = _scored(steps, method, LABELS[method], network, processor, adapter, world, evaluation,
                                 mmmu, mmmu_config)
            free_memory()
        bench.extend(scores[0])
        utility.extend(scores[1])
    return bench, utility


def full_benchmark(profile, models, splits, out, *, methods=("manu",), manu: ManuConfig | None = None,
                   unlearn_config=None, evaluation: EvalConfig | None = None, mmmu_source: str | None = None,
                   mmmu_config=None, retain_stats: int | None = None, retain_eval: int | None = None,
                   resume: bool = True, echo=print):
    """Chapter 06: every model × split of a profile through :func:`benchmark_split`, one run directory
    ``out/<model>_<split>`` each (resumable step by step), each model freed before the next is loaded.

    profile: a :class:`~manu_lite.config.Profile` (or name); ``models``: checkpoints (``"tiny"`` on the tiny
    profile, trained per world); ``splits``: forget splits. ``manu``/``evaluation`` default to the profile's.
    mmmu_source: MMMU's hub name or a local directory in its hub layout, read once with ``mmmu_config`` (its
    ``subjects`` and ``limit`` fit a Colab budget); ``None`` skips MMMU. ``retain_eval``: retain people
    evaluated; ``retain_stats``: retain people MANU's statistics stream (``None``: all).
    Returns ``(results, mmmu_results, costs)``: the records of every run (methods labelled ``<model> <split>
    <method>``) and one cost row per step (``model``, ``split``, ``step``, seconds, peak memory, ``resumed``).
    """
    import dataclasses

    from .config import resolve_profile
    from .mmmu import MMMUConfig, load_mmmu
    from .profiles import profile_eval, profile_manu, profile_model, profile_world
    from .steps import StepRun, free_memory

    profile = resolve_profile(profile)
    manu = manu or profile_manu(profile)
    evaluation = evaluation or profile_eval(profile)
    mmmu_config = mmmu_config or MMMUConfig()
    unlearn_config = replace(unlearn_config or UnlearnConfig(), lora=True)
    mmmu = load_mmmu(mmmu_source, mmmu_config.subjects, mmmu_config.split, mmmu_config.limit, mmmu_config.seed) \
        if mmmu_source else None
    results, utility, costs = Results(), Results(), []
    for name in models:
        run_profile, model = dataclasses.replace(profile, model=name), None
        for split in splits:
            world = profile_world(run_profile, split, max_retain=retain_eval)
            label = f"{name.split('/')[-1]} {split}"
            settings = {"model": name, "split": split, "methods": list(methods), "manu": manu.to_dict(),
                        "unlearn": unlearn_config.to_dict(),
                        "evaluation": dataclasses.asdict(evaluation), "retain_stats": retain_stats,
                        "retain_eval": retain_eval, "mmmu": mmmu_source and dataclasses.asdict(mmmu_config)}
            steps = StepRun(Path(out) / label.replace(" ", "_"), settings, resume=resume, echo=echo and (
                lambda line, label=label: echo(f"{label} | {line}")))
            if model is None or name == "tiny":  # the tiny model is trained per world; checkpoints load once
                model = None
                free_memory()
                model, processor, adapter = steps.measured("load", lambda: profile_model(run_profile, world))
            bench, scores = benchmark_split(steps, model, processor, adapter, world, methods=methods, manu=manu,
                                            unlearn_config=unlearn_config, evaluation=evaluation, mmmu=mmmu,
                                            mmmu_config=mmmu_config, batch_size=profile.batch_size,
                                            retain_stats=retain_stats, model_id=name)
            for record in [*bench, *scores]:
                record["method"] = f"{label} {record['method']}"
            results.extend(bench)
            utility.extend(scores)
            costs += [{"model": name, "split": split, **c} for c in steps.costs]
        del model, processor, adapter
        free_memory()
    return results, utility, costs


def benchmark_tables(results: Results, mmmu: Results | None = None):
    """The chapter 06 tables from :func:`full_benchmark`'s records (methods labelled ``<model> <split> <method>``).

    Returns ``(drops, utility)``: ``drops`` has one row per (run, method) other than Vanilla and the points lost
    from vanilla per set and rendering (mean of the tasks; :func:`manu_lite.scores.drops`); ``utility`` has one row
    per (run, method) with Vanilla: the celebrity set in % per rendering (mean of the tasks: the tiny world's
    utility measure) and, with ``mmmu`` records, the overall MMMU accuracy in % and its question count.
    """
    import pandas as pd

    from .report import RENDERING_NAMES
    from .scores import drops as drops_of

    frame = results.frame()
    frame[["run", "method"]] = frame["method"].str.rsplit(" ", n=1, expand=True)
    rows, utility = {}, {}
    for run, part in frame.groupby("run", sort=False):
        scored = Results(part.drop(columns="run").to_dict("records"))
        for method, per_set in drops_of(scored).items():
            if method != "Vanilla":
                rows[(run, method)] = {f"Δ{s} {RENDERING_NAMES[r]}": v for s, per in per_set.items()
                                       for r, v in per.items()}
        celebrity = part[part["set"] == "celebrity"].groupby(["method", "rendering"], sort=False)["value"].mean()
        for (method, rendering), value in celebrity.items():
            utility.setdefault((run, method), {})[f"celebrity {RENDERING_NAMES[rendering]} %"] = 100 * value
    for record in mmmu or ():
        if record["task"] == "overall":
            run, method = record["method"].rsplit(" ", 1)
            utility.setdefault((run, method), {}).update({"MMMU %": 100 * record["value"], "MMMU n": record["n"]})
    return pd.DataFrame.from_dict(rows, orient="index"), pd.DataFrame.from_dict(utility, orient="index")
