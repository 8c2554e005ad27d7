"""``manu-lite compare``: Vanilla, GA, GradDiff, KL, NPO and MANU (paper, reference, balanced) on one world and split.

Every method starts from the same vanilla weights, is evaluated with the same :class:`EvalConfig`, and is measured
the same way (wall time and peak memory of the unlearning step). Small models are deep-copied per method; with LoRA
baselines (``unlearn.lora``: quantized or large models, :func:`profile_compare`) nothing is copied: each baseline
trains fresh adapters that are removed afterwards, MANU's mask is applied and restored (:func:`unlearned`). With
``mmmu_source`` every model is also scored on MMMU (general utility). Beyond the paper's protocol: sweeps (MANU over
alpha, formulation, positions; baselines over steps), a relearning attack (not on the LoRA path), membership inference.

Outputs under ``out`` (all JSON written atomically):

``results.json``       tidy records ``{method, set, rendering, task, metric, value, n}`` of every method.
``table.csv|.md``      the paper-style table: rows = methods; columns = set × task × rendering (percent), cost.
``summary.json|.md``   per method and rendering: drops from vanilla (points, mean of the three tasks) on each set,
                       the modality balance, cost, relearning recovery, membership-inference AUC; and per rendering
                       the best forget drop at <= 5 points retain drop (in both renderings) over every method and
                       over every sweep point.
``sweeps.json``        every sweep point: its settings and its records (forget and a retain subsample).
``attacks.json``       relearning and membership-inference details per method.
``mmmu.json``          with ``mmmu_source``: MMMU records (``set="mmmu"``, per subject and overall) per method.
``figures/*.png|json`` results bars, trade-off curves, modality balance, pruned-neuron heatmap, robustness.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .artifacts import write_json
from .attacks import membership_auc, recovery, relearn_attack
from .baselines import METHODS as BASELINES
from .baselines import UnlearnConfig, lora_adapters, unlearn_with
from .bench import World
from .config import RENDERINGS, TINY_EVAL, EvalConfig, ManuConfig, Profile, resolve_profile
from .cost import measure
from .evaluate import Results, evaluate
from .finetune import TrainConfig, training_items
from .mmmu import MMMUConfig, evaluate_mmmu, load_mmmu
from .models import PromptAdapter
from .profiles import for_hub_model
from .report import paper_table, summary_table, with_mmmu, write_table
from .steps import free_memory
from .scores import balance, best_at_retain_budget, distance_to_retain, drops, question_records

RETAIN = "Retain"  # the row of the retain model (trained without the forget people): the target
LABELS = {"vanilla": "Vanilla", "ga": "GA", "graddiff": "GradDiff", "kl": "KL", "npo": "NPO",
          "manu-paper": "MANU-paper", "manu-reference": "MANU-reference", "manu-balanced": "MANU-balanced"}
# compare row → ManuConfig.formulation: the paper's equations, the released code's selection, the book's variant.
MANU_METHODS = {"manu-paper": "paper", "manu-reference": "reference", "manu-balanced": "balanced"}


@dataclass(frozen=True)
class CompareConfig:
    """What ``compare`` runs.

    methods:          keys of :data:`LABELS`, in table order.
    unlearn:          budget of the gradient baselines (one config for all four).
    manu:             MANU settings; ``formulation`` is set per method (manu-paper / manu-reference / manu-balanced).
    evaluation:       the main evaluation (every set).
    sweep_sets, sweep_retain_people: sweep points are evaluated on these sets only, with a seeded subsample of
                      the retain people (the vanilla model is re-evaluated the same way, so drops compare).
    alphas, positions: the MANU sweep (every MANU method at each point); ``step_grid``: the baselines' sweep.
    relearn_fraction: share of the forget pairs the relearning attacker fine-tunes on (the retain-only attack
                      uses as many retain pairs); ``relearn``: its fine-tune.
    mia_people:       never-seen people generated for membership inference (synthetic worlds only).
    unlearning_metrics: with a retain model, the field's metrics per rendering (:mod:`manu_lite.metrics`).
    mmmu_source:      MMMU's hub name (``"MMMU/MMMU"``) or a local directory in its hub layout: every model is
                      also scored on MMMU with ``mmmu`` (a subject subset and a per-subject limit fit small
                      budgets); ``None`` skips it (the tiny world: its celebrity set measures utility instead).
    """

    methods: tuple[str, ...] = tuple(LABELS)
    unlearn: UnlearnConfig = UnlearnConfig()
    manu: ManuConfig = ManuConfig()
    manu_batch_size: int = 32
    evaluation: EvalConfig = TINY_EVAL
    sweeps: bool = True
    sweep_sets: tuple[str, ...] = ("forget", "retain")
    sweep_retain_people: int | None = 15
    alphas: tuple[float, ...] = (2.5, 5.0, 10.0, 20.0)
    positions: tuple[str, ...] = ("recall", "all")
    step_grid: tuple[int, ...] = (2, 5, 10, 20)
    attacks: bool = True
    relearn_fraction: float = 0.3
    relearn: TrainConfig = TrainConfig(epochs=2, lr=1e-3, batch_size=8, warmup_steps=0)
    mia_people: int = 20
    unlearning_metrics: bool = True
    mmmu_source: str | None = None
    mmmu: MMMUConfig = MMMUConfig()
    seed: int = 0

    def __post_init__(self):
        if unknown := [m for m in self.methods if m not in LABELS]:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(LABELS)}")
        for name, values in (("alphas", self.alphas), ("step_grid", self.step_grid), ("positions", self.positions)):
            if len(set(values)) < len(values):  # a repeated sweep point would run and be plotted twice
                raise ValueError(f"{name}={values} repeats a value; give each sweep point once")
        if not 0 < self.relearn_fraction <= 1:
            raise ValueError(f"relearn_fraction={self.relearn_fraction} must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def profile_compare(profile: Profile | str | None, **settings) -> CompareConfig:
    """The CompareConfig of a profile: its evaluation and MANU settings, ``settings`` (any field) on top; on a hub
    model (colab, full) LoRA baselines and MANU statistics in the profile's batch size (profiles.for_hub_model)."""
    profile = resolve_profile(profile)
    config = CompareConfig(**{"evaluation": profile.evaluation, "manu": profile.manu, **settings})
    return config if profile.model == "tiny" else for_hub_model(config, profile.batch_size)


# ------------------------------------------------------------------------------------------------ methods
def manu_config(config: CompareConfig, method: str) -> ManuConfig:
    return replace(config.manu, formulation=MANU_METHODS[method])


def unlearn(method: str, model, processor, adapter: PromptAdapter, world: World, config: CompareConfig,
            progress: bool = True) -> dict:
    """Apply ``method`` to ``model`` in place (MANU: its mask stays applied); returns its report (JSON-ready)."""
    if method == "vanilla":
        return {}
    if method in BASELINES:
        report = unlearn_with(method, model, processor, adapter, world, config.unlearn, progress=progress)
        return {"steps": len(report["losses"]), "final_loss": report["losses"][-1] if report["losses"] else None,
                "forget_items": report["forget_items"], "retain_items": report["retain_items"]}
    from .manu import choose_prune_mode, manu_unlearn

    mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, manu_config(config, method),
                                adapter=adapter, batch_size=config.manu_batch_size, progress=progress)
    mask.apply(model)
    return {"steps": 0, "mask": mask.summary(), "timings": report.timings, "stats_bytes": report.stats_bytes,
            "_mask": mask}


@contextlib.contextmanager
def unlearned(method: str, vanilla, processor, adapter: PromptAdapter, world: World, config: CompareConfig,
              progress: bool = True):
    """Yields ``(model, report, cost)``: ``vanilla`` after ``method`` (:func:`_fresh`), its report and the cost
    of the unlearning (:func:`manu_lite.cost.measure`). On the LoRA path MANU's mask is restored on exit."""
    with _fresh(method, vanilla, config) as model:
        with measure() as cost:
            report = unlearn(method, model, processor, adapter, world, config, progress)
        mask = report.pop("_mask", None)
        try:
            yield model, report, cost
        finally:
            if mask is not None and model is vanilla:
                mask.restore()


def _fresh(method: str, vanilla, config: CompareConfig):
    """The model a method starts from: a deep copy of ``vanilla`` (full fine-tuning, small models), or with LoRA
    (``config.unlearn.lora``) ``vanilla`` itself, for a baseline in fresh adapters removed on exit (no copy)."""
    if not config.unlearn.lora:
        return contextlib.nullcontext(copy.deepcopy(vanilla))
    if method in BASELINES:
        return lora_adapters(vanilla, config.unlearn.lora_r, config.unlearn.seed)
    return contextlib.nullcontext(vanilla)


# ------------------------------------------------------------------------------------------------ scores
def _forget_score(results, method: str, rendering: str | None = None) -> float:
    values = [r["value"] for r in results if r["method"] == method and r["set"] == "forget"
              and (rendering is None or r["rendering"] == rendering)]
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------ sweeps
def _sweep_world(world: World, config: CompareConfig) -> World:
    return world.with_retain_sample(config.sweep_retain_people or None, config.seed)


def run_sweeps(vanilla, processor, adapter: PromptAdapter, world: World, config: CompareConfig,
               progress: bool = True) -> tuple[Results, list[dict]]:
    """MANU over alpha × formulation × positions, and each baseline over ``step_grid``.

    Returns the records of every point (and of Vanilla) and the points: ``{label, family, param, x, settings,
    drops, mask?}``. MANU statistics are collected once per positions setting and reused for every alpha and
    formulation; each baseline is trained once to the largest budget and evaluated after each budget of the grid.
    """
    from .hooks import find_sites
    from .importance import select
    from .manu import choose_prune_mode, manu_unlearn
    from .prune import NeuronMask

    world = _sweep_world(world, config)
    evaluation = replace(config.evaluation, sets=config.sweep_sets)
    records = Results(evaluate(vanilla, processor, adapter, world, evaluation, method="Vanilla", progress=False))
    points = []

    def point(label, model, family, param, x, settings, extra=None):
        records.extend(evaluate(model, processor, adapter, world, evaluation, method=label, progress=False))
        points.append({"label": label, "family": family, "param": param, "x": x, "settings": settings, **(extra or {})})

    manu_families = [m for m in config.methods if m in MANU_METHODS]
    if manu_families:
        model = vanilla  # statistics read it and every mask is restored: no copy needed
        sites = find_sites(model, config.manu.towers)
        for positions in config.positions:
            _, report = manu_unlearn(model, processor, world.forget_train, world.retain_train,
                                     replace(config.manu, positions=positions), adapter=adapter,
                                     batch_size=config.manu_batch_size, progress=False)
            grid = [(m, a) for m in manu_families for a in config.alphas]
            for method, alpha in tqdm(grid, desc=f"sweep MANU ({positions})", disable=not progress):
                manu = replace(manu_config(config, method), positions=positions, alpha=alpha)
                mask = NeuronMask.from_sites(select(report.stats, manu), sites,
                                             mode=choose_prune_mode(model, manu.prune_mode))
                with mask.applied(model):
                    point(f"{LABELS[method]} {positions} α={alpha:g}", model, f"{LABELS[method]} ({positions})",
                          "alpha", alpha, {"formulation": manu.formulation, "positions": positions, "alpha": alpha},
                          {"mask": mask.summary()})
    steps = sorted(set(config.step_grid))
    for method in [m for m in config.methods if m in BASELINES]:
        def at_step(step, network, method=method):
            if step in steps:
                point(f"{LABELS[method]} {step} steps", network, LABELS[method], "steps", step,
                      {**config.unlearn.to_dict(), "steps": step})

        with _fresh(method, vanilla, config) as model:
            unlearn_with(method, model, processor, adapter, world, replace(config.unlearn, steps=steps[-1]),
                         progress=progress, on_step=at_step)
        free_memory()
    all_drops = drops(records)
    for p in points:
        p["drops"] = all_drops[p["label"]]
    return records, points


# ------------------------------------------------------------------------------------------------ workflow
@dataclass
class Comparison:
    """Everything ``compare`` produced (also on disk under ``out``)."""

    results: Results
    costs: dict
    summary: dict
    sweep_records: Results = field(default_factory=Results)
    sweep_points: list = field(default_factory=list)
    attacks: dict = field(default_factory=dict)
    figures: list = field(default_factory=list)
    questions: list = field(default_factory=list)  # per-question scores (scores.question_records)
    mmmu: Results = field(default_factory=Results)  # records with set="mmmu" (empty without mmmu_source)


def compare(vanilla, processor, adapter: PromptAdapter, world: World, out, config: CompareConfig | None = None,
            holdout=None, progress: bool = True, retain=None) -> Comparison:
    """Run every method of ``config`` from copies of ``vanilla`` and write tables, JSON and figures to ``out``.

    holdout: training-format records of people the vanilla model never saw, for membership inference (``None``
             skips it; :func:`unseen_people` makes them for synthetic worlds).
    retain:  ``(model, processor, adapter)`` of the retain model (never saw the forget people): evaluated as the
             row ``Retain``, the target every method's distance and the metrics of :mod:`manu_lite.metrics`
             (forget quality, privleak) are measured against. ``None`` skips both.
    """
    from . import report, viz

    config = config or CompareConfig()
    out = Path(out)
    results, costs, reports, attacks = Results(), {}, {}, {}
    members = training_items(world.forget_train)
    non_members = training_items(holdout) if holdout else None
    unlearning, timings, questions = {}, {}, []

    def field_metrics(label, model):
        if retain is not None and config.unlearning_metrics:
            from time import perf_counter

            from .metrics import forget_generations, model_metrics

            start = perf_counter()
            unlearning[label] = model_metrics(model, processor, adapter, world, non_members,
                                              generations=forget_generations(model, processor, adapter, world,
                                                                             config.evaluation))
            timings[label] = perf_counter() - start

    mmmu_results, mmmu_data = Results(), None
    if config.mmmu_source:
        mmmu_data = load_mmmu(config.mmmu_source, config.mmmu.subjects, config.mmmu.split, config.mmmu.limit,
                              config.mmmu.seed)

    def utility(label, model):
        if mmmu_data is not None:
            mmmu_results.extend(evaluate_mmmu(model, processor, adapter, mmmu_data, config.mmmu, method=label,
                                              progress=progress))

    if retain is not None:
        utility(RETAIN, retain[0])
        details = {}
        results.extend(evaluate(retain[0], processor, adapter, world, config.evaluation, method=RETAIN,
                                progress=progress, details=details))
        questions.extend(question_records(details, RETAIN))
        field_metrics(RETAIN, retain[0])
        if non_members and config.attacks:
            attacks[RETAIN] = {"mia": membership_auc(retain[0], processor, adapter, members, non_members)}
    for method in config.methods:
        label = LABELS[method]
        with unlearned(method, vanilla, processor, adapter, world, config, progress) as (model, done, cost):
            reports[label], costs[label], details = done, cost, {}
            results.extend(evaluate(model, processor, adapter, world, config.evaluation, method=label,
                                    progress=progress, details=details))
            questions.extend(question_records(details, label))
            utility(label, model)
            field_metrics(label, model)
            if config.attacks:
                attacks[label] = {}
                # The relearning attack fine-tunes copies of the model: not on the LoRA (large-model) path.
                if method != "vanilla" and not config.unlearn.lora:
                    attacks[label]["relearn"] = relearn_attack(
                        model, processor, adapter, world, label, fraction=config.relearn_fraction,
                        relearn=config.relearn, evaluation=config.evaluation, seed=config.seed, progress=progress)
                if non_members:
                    attacks[label]["mia"] = membership_auc(model, processor, adapter, members, non_members)
            del model
        free_memory()
    results.save(out / "results.json")
    if config.mmmu_source:
        mmmu_results.save(out / "mmmu.json")
    write_json(out / "questions.json", questions)
    write_json(out / "cost.json", {m: {**c, "report": reports[m]} for m, c in costs.items()})
    sweep_records, points = Results(), []
    if config.sweeps:
        sweep_records, points = run_sweeps(vanilla, processor, adapter, world, config, progress)
        write_json(out / "sweeps.json", {"points": points, "records": list(sweep_records)})
    summary = summarize(results, costs, attacks, points, unlearning, mmmu_results)
    if unlearning:
        write_json(out / "unlearning_metrics.json", {"metrics": unlearning, "seconds": timings})
    write_json(out / "attacks.json", {m: {"relearn": {s: list(r) for s, r in a.get("relearn", {}).items()},
                                          "mia": a.get("mia")} for m, a in attacks.items()})
    write_json(out / "summary.json", summary)
    write_table(with_mmmu(paper_table(results, costs), mmmu_results), out / "table")
    write_table(summary_table(summary), out / "summary")
    figures = out / "figures"
    paths = [viz.plot_results(results, figures / "results.png"),
             report.plot_balance(summary, figures / "balance.png")]
    if points:
        paths.append(report.plot_tradeoff(points, figures / "tradeoff.png",
                                          target=summary["methods"].get(RETAIN, {}).get("drops")))
    # The alpha sweep at recall positions holds the main MANU masks too; without sweeps, show the main ones.
    masks = {p["label"]: p["mask"] for p in points if "mask" in p and p["settings"]["positions"] == "recall"} or \
        {LABELS[m]: reports[LABELS[m]]["mask"] for m in config.methods if m in MANU_METHODS}
    if masks:
        paths.append(report.plot_pruned_heatmap(masks, figures / "pruned_neurons.png"))
    if config.attacks:
        paths.append(report.plot_robustness(summary, figures / "robustness.png"))
    return Comparison(results, costs, summary, sweep_records, points, attacks, paths, questions, mmmu_results)


def summarize(results, costs: dict, attacks: dict, points: list[dict], unlearning: dict | None = None,
              mmmu=()) -> dict:
    """Per-method drops, balance, cost, relearning recovery and MIA; best methods at <= 5 points retain drop;
    with a retain model (``unlearning``: :func:`manu_lite.metrics.model_metrics` per method), the distance to it,
    forget quality and privleak; with ``mmmu`` records, each method's MMMU accuracy and its drop from vanilla."""
    overall = {r["method"]: r for r in mmmu if r["task"] == "overall"}
    all_drops = drops(results)
    methods = {}
    unlearning = unlearning or {}
    has_retain = any(r["method"] == RETAIN for r in results)
    costs = {**({RETAIN: None} if has_retain else {}), **costs}
    for label, cost in costs.items():
        row = {"drops": all_drops[label], "balance": balance(all_drops[label]), "cost": cost,
               "forget_score": _forget_score(results, label)}
        attack = attacks.get(label, {})
        if "relearn" in attack:
            row["relearn"] = {source: recovery(_forget_score(results, "Vanilla"), _forget_score(results, label),
                                               _forget_score(attacked, f"{label} +relearn({source})"))
                              for source, attacked in attack["relearn"].items()}
            row["relearn_forget_score"] = {source: _forget_score(attacked, f"{label} +relearn({source})")
                                           for source, attacked in attack["relearn"].items()}
        if "mia" in attack:
            row["mia"] = attack["mia"]
        if has_retain:
            row["distance_to_retain"] = distance_to_retain(results, label)
        if label in overall:  # MMMU accuracy, and its drop from vanilla in points
            row["mmmu"] = {"accuracy": overall[label]["value"], "n": overall[label]["n"], "drop": 100 * (
                overall["Vanilla"]["value"] - overall[label]["value"]) if "Vanilla" in overall else None}
        if label in unlearning and RETAIN in unlearning:
            from .metrics import against_retain

            row["unlearning"] = {r: {k: v for k, v in m.items() if k != "truth_ratios"}
                                 for r, m in unlearning[label].items()}
            row["vs_retain"] = against_retain(unlearning[label], unlearning[RETAIN])
        methods[label] = row
    main_points = [{"label": m, "drops": d} for m, d in all_drops.items() if m not in ("Vanilla", RETAIN)]
    closest = {}
    for rendering in RENDERINGS:
        scored = [(row["distance_to_retain"][rendering], m) for m, row in methods.items()
                  if m != RETAIN and rendering in row.get("distance_to_retain", {})]
        if scored:
            closest[rendering] = {"label": min(scored)[1], "distance": min(scored)[0]}
    return {"methods": methods, "closest_to_retain": closest,
            "best_at_5_points_retain": {"main": best_at_retain_budget(main_points),
                                        "sweeps": best_at_retain_budget(points) if points else {}},
            "definition": "drop = vanilla − method in points, mean over MC accuracy, ROUGE-L and cloze accuracy; "
                          "best = largest forget drop with retain drop <= 5 points in both renderings"}


