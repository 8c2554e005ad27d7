"""``manu-lite compare``: Vanilla, GA, GradDiff, KL, NPO and MANU (both formulations) on one world and split.

Every method starts from a copy of the same vanilla model, is evaluated with the same :class:`EvalConfig`, and
is measured the same way (wall time and peak memory of the unlearning step). On top of the paper's protocol
come sweeps (MANU over alpha, per formulation and token positions; baselines over steps), and two checks the
paper lists as limitations: a relearning attack and a loss-based membership-inference test.

Outputs under ``out`` (all JSON written atomically):

``results.json``       tidy records ``{method, set, rendering, task, metric, value, n}`` of every method.
``table.csv|.md``      the paper-style table: rows = methods; columns = set × task × rendering (percent), then
                       unlearning seconds and peak memory.
``summary.json|.md``   per method and rendering: drops from vanilla (points, mean of the three tasks) on each set,
                       the modality balance, cost, relearning recovery, membership-inference AUC; and per rendering
                       the best forget drop at <= 5 points retain drop (in both renderings) over every method and
                       over every sweep point.
``sweeps.json``        every sweep point: its settings and its records (forget and a retain subsample).
``attacks.json``       relearning and membership-inference details per method.
``figures/*.png|json`` results bars, trade-off curves, modality balance, pruned-neuron heatmap, robustness.
"""
from __future__ import annotations

import contextlib
import copy
import random
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .artifacts import atomic_path, write_json
from .baselines import METHODS as BASELINES
from .baselines import UnlearnConfig, unlearn_with
from .config import RENDERINGS, ManuConfig
from .data import World
from .evaluate import SETS, TASKS, EvalConfig, Results, evaluate
from .finetune import TrainConfig, train, training_items
from .models import IGNORE, PromptAdapter, answer_nll, iter_batches, model_device, to_device
from .workflow import TINY_EVAL

LABELS = {"vanilla": "Vanilla", "ga": "GA", "graddiff": "GradDiff", "kl": "KL", "npo": "NPO",
          "manu-paper": "MANU-paper", "manu-reference": "MANU-reference"}
MANU_METHODS = {"manu-paper": "paper", "manu-reference": "reference"}
TASK_NAMES = {"mc": "MC", "generation": "ROUGE-L", "cloze": "cloze"}
RENDERING_NAMES = {"image_text": "img+txt", "text_only": "text"}


@dataclass(frozen=True)
class CompareConfig:
    """What ``compare`` runs.

    methods:          keys of :data:`LABELS`, in table order.
    unlearn:          budget of the gradient baselines (one config for all four).
    manu:             MANU settings; ``formulation`` is set per method (manu-paper / manu-reference).
    evaluation:       the main evaluation (every set).
    sweep_sets, sweep_retain_people: sweep points are evaluated on these sets only, with a seeded subsample of
                      the retain people (the vanilla model is re-evaluated the same way, so drops compare).
    alphas, positions: the MANU sweep (both formulations at each point); ``step_grid``: the baselines' sweep.
    relearn_fraction: share of the forget pairs the relearning attacker fine-tunes on (the retain-only attack
                      uses as many retain pairs); ``relearn``: its fine-tune.
    mia_people:       never-seen people generated for membership inference (synthetic worlds only).
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
    seed: int = 0

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in LABELS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(LABELS)}")
        if not 0 < self.relearn_fraction <= 1:
            raise ValueError(f"relearn_fraction={self.relearn_fraction} must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------- cost
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measure():
    """Wall time and peak memory of a block, filled into the yielded dict on exit.

    ``seconds``; ``peak_rss_mb``: the peak resident memory of the process during the block minus the resident
    memory at its start. tracemalloc cannot measure this (it sees only Python's allocator, not torch's tensor
    memory), and ``ru_maxrss`` is a lifetime maximum that moves only when a new record is set; so on Linux the
    kernel's high-water mark (VmHWM) is reset before the block. Elsewhere the ``ru_maxrss`` increase is reported
    (``rss_method = "ru_maxrss"``, a lower bound). ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` above the
    start, when a GPU is in use.
    """
    cost: dict = {}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        cuda_start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss_start = _proc_status_kb("VmRSS")
    exact = rss_start is not None and _reset_peak_rss()
    maxrss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    yield cost
    if cuda:
        torch.cuda.synchronize()
    cost["seconds"] = time.perf_counter() - started
    if exact:
        cost["peak_rss_mb"] = max(0, _proc_status_kb("VmHWM") - rss_start) / 1024
        cost["rss_method"] = "VmHWM"
    else:
        cost["peak_rss_mb"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_start) / 1024
        cost["rss_method"] = "ru_maxrss"
    cost["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - cuda_start) / 2**20 if cuda else None


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
    from .manu import manu_unlearn

    mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, manu_config(config, method),
                                adapter=adapter, batch_size=config.manu_batch_size, progress=progress)
    mask.apply(model)
    return {"steps": 0, "mask": mask.summary(), "timings": report.timings, "stats_bytes": report.stats_bytes}


# ------------------------------------------------------------------------------------------------ scores
def drops(results, vanilla: str = "Vanilla", method: str | None = None) -> dict:
    """Vanilla minus ``method``, in points, per (set, rendering): the mean over tasks of the score drop.

    Returns ``{method: {set: {rendering: points}}}`` (every method of ``results`` unless one is named), sets in
    the order forget, test, retain, celebrity.
    """
    frame = results.frame() if hasattr(results, "frame") else Results(results).frame()
    mean = frame.groupby(["method", "set", "rendering"])["value"].mean()
    out = {}
    for name in ([method] if method else list(dict.fromkeys(frame["method"]))):
        out[name] = {s: {r: 100 * (mean[(vanilla, s, r)] - mean[(name, s, r)]) for r in RENDERINGS
                         if (vanilla, s, r) in mean.index and (name, s, r) in mean.index} for s in SETS}
        out[name] = {s: per for s, per in out[name].items() if per}
    return out


def balance(method_drops: dict) -> float:
    """Modality balance: |Δforget(image+text) − Δforget(text-only)| in points (0 = both renderings forgotten alike)."""
    forget = method_drops["forget"]
    return abs(forget["image_text"] - forget["text_only"])


def best_at_retain_budget(points: list[dict], budget: float = 5.0) -> dict:
    """Per rendering, the point with the largest forget drop among those whose retain drop is <= ``budget`` in
    *both* renderings (a method that wrecks image+text retain knowledge does not qualify for text-only).

    ``points``: dicts with ``label`` and ``drops`` (``{set: {rendering: points}}``).
    """
    eligible = [p for p in points if max(p["drops"]["retain"].values()) <= budget]
    best = {}
    for rendering in RENDERINGS:
        if eligible:
            top = max(eligible, key=lambda p: p["drops"]["forget"][rendering])
            best[rendering] = {"label": top["label"], "forget_drop": top["drops"]["forget"][rendering],
                               "retain_drop": top["drops"]["retain"][rendering],
                               "other_rendering_forget_drop": top["drops"]["forget"][_other(rendering)],
                               "other_rendering_retain_drop": top["drops"]["retain"][_other(rendering)]}
    return best


def _other(rendering: str) -> str:
    return RENDERINGS[1 - RENDERINGS.index(rendering)]


def rank_auc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counting one half: the ROC AUC via average ranks
    (Mann–Whitney U), without sklearn."""
    if not positive or not negative:
        raise ValueError("AUC needs at least one positive and one negative score")
    scores = torch.tensor(list(positive) + list(negative), dtype=torch.float64)
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    values, inverse = torch.unique(scores, return_inverse=True)
    mean_rank = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks) / \
        torch.bincount(inverse, minlength=len(values)).double()
    ranks = mean_rank[inverse]
    n_pos = len(positive)
    u = ranks[:n_pos].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * len(negative))


@torch.no_grad()
def item_losses(model, processor, adapter: PromptAdapter, items, batch_size: int = 64) -> list[float]:
    """Mean answer-token NLL of each item (order grouped by rendering, as :func:`iter_batches` yields)."""
    device = model_device(model)
    losses = []
    for batch in iter_batches(processor, adapter, items, batch_size):
        batch = to_device(batch, device)
        tokens = (batch["labels"][:, 1:] != IGNORE).sum(dim=1).clamp(min=1)
        losses += (answer_nll(model, batch, per_sequence=True) / tokens).tolist()
    return losses


def membership_auc(model, processor, adapter: PromptAdapter, members, non_members, batch_size: int = 64) -> dict:
    """Loss-based membership inference: AUC of "lower loss ⇒ member" separating ``members`` from ``non_members``.

    members: the forget people's pairs (seen in training, then unlearned); non_members: pairs of people never
    trained on. AUC ≈ 0.5: indistinguishable (the goal); ≈ 1: still remembered; well below 0.5: the forget
    people now stand out by a *higher* loss than strangers, which also leaks their membership.
    """
    seen = item_losses(model, processor, adapter, members, batch_size)
    unseen = item_losses(model, processor, adapter, non_members, batch_size)
    return {"auc": rank_auc([-x for x in seen], [-x for x in unseen]),
            "member_loss": sum(seen) / len(seen), "non_member_loss": sum(unseen) / len(unseen),
            "members": len(seen), "non_members": len(unseen)}


def unseen_people(world: World, out: Path, n: int, seed: int) -> list:
    """Training-format records of ``n`` synthetic people never trained on (a separately seeded bench), minus any
    whose name a world person already has."""
    from .data import load_bench, make_synthetic_bench

    bench = Path(out) / f"unseen-bench-{n}-{seed}"
    if not (bench / "ft_Data").exists():
        make_synthetic_bench(bench, n_profiles=max(20, n), n_celebrities=4, seed=seed)
    known = {r.name for r in world.forget_train + world.retain_train}
    return [r for r in load_bench(str(bench), "ft_Data") if r.name not in known][:n]


# ------------------------------------------------------------------------------------------------ attacks
def relearn_attack(model, processor, adapter: PromptAdapter, world: World, config: CompareConfig, method: str,
                   progress: bool = True) -> dict:
    """Fine-tune copies of an unlearned ``model`` on a few forget pairs, and on as many retain pairs; evaluate
    the forget set after each. Returns ``{"forget": Results, "retain": Results}`` (``method`` suffixed)."""
    rng = random.Random(config.seed)
    forget_items = training_items(world.forget_train)
    k = max(1, round(config.relearn_fraction * len(forget_items)))
    sources = {"forget": rng.sample(forget_items, k), "retain": rng.sample(training_items(world.retain_train), k)}
    evaluation = replace(config.evaluation, sets=("forget",))
    out = {}
    for source, items in sources.items():
        attacked = copy.deepcopy(model)
        train(attacked, processor, adapter, items, config.relearn, progress=progress, desc=f"relearn {source}")
        out[source] = evaluate(attacked, processor, adapter, world, evaluation, method=f"{method} +relearn({source})",
                               progress=False)
    return out


def recovery(vanilla: float, unlearned: float, attacked: float, min_gap: float = 0.05) -> float | None:
    """Share of the forgotten score that came back: (attacked − unlearned) / (vanilla − unlearned); None when
    less than ``min_gap`` (5 points) was forgotten, where the ratio would be noise over a tiny denominator."""
    gap = vanilla - unlearned
    return (attacked - unlearned) / gap if gap >= min_gap else None


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
    from .manu import manu_unlearn
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
        model = copy.deepcopy(vanilla)
        sites = find_sites(model, config.manu.towers)
        for positions in config.positions:
            _, report = manu_unlearn(model, processor, world.forget_train, world.retain_train,
                                     replace(config.manu, positions=positions), adapter=adapter,
                                     batch_size=config.manu_batch_size, progress=False)
            grid = [(m, a) for m in manu_families for a in config.alphas]
            for method, alpha in tqdm(grid, desc=f"sweep MANU ({positions})", disable=not progress):
                manu = replace(manu_config(config, method), positions=positions, alpha=alpha)
                mask = NeuronMask.from_sites(select(report.stats, manu), sites, mode=manu.prune_mode)
                with mask.applied(model):
                    point(f"{LABELS[method]} {positions} α={alpha:g}", model, f"{LABELS[method]} ({positions})",
                          "alpha", alpha, {"formulation": manu.formulation, "positions": positions, "alpha": alpha},
                          {"mask": mask.summary()})
    steps = sorted(set(config.step_grid))
    for method in [m for m in config.methods if m in BASELINES]:
        model = copy.deepcopy(vanilla)

        def at_step(step, network, method=method):
            if step in steps:
                point(f"{LABELS[method]} {step} steps", network, LABELS[method], "steps", step,
                      {**config.unlearn.to_dict(), "steps": step})

        unlearn_with(method, model, processor, adapter, world, replace(config.unlearn, steps=steps[-1]),
                     progress=progress, on_step=at_step)
    all_drops = drops(records)
    for p in points:
        p["drops"] = all_drops[p["label"]]
    return records, points


# ------------------------------------------------------------------------------------------------ tables
def paper_table(results, costs: dict | None = None):
    """Rows = methods; columns = set × task × rendering in percent (the paper's layout), then cost columns."""
    import pandas as pd

    table = Results(results).table()
    columns = [c for c in ((s, t, r) for s in SETS for t in TASKS for r in RENDERINGS) if c in table.columns]
    table = table[columns]
    table.columns = [f"{s} {TASK_NAMES[t]} {RENDERING_NAMES[r]}" for s, t, r in columns]
    if costs:
        table["unlearn s"] = pd.Series({m: round(c["seconds"], 1) for m, c in costs.items()})
        table["peak MB"] = pd.Series({m: round(c["peak_rss_mb"], 1) for m, c in costs.items()})
    return table


def summary_table(summary: dict):
    """One row per method: drops per set and rendering, balance, cost, relearning, membership inference."""
    import pandas as pd

    rows = {}
    for method, row in summary["methods"].items():
        flat = {f"Δ{s} {RENDERING_NAMES[r]}": round(v, 1) for s, per in row["drops"].items() for r, v in per.items()}
        flat["balance"] = round(row["balance"], 1)
        flat["unlearn s"] = round(row["cost"]["seconds"], 1)
        flat["peak MB"] = round(row["cost"]["peak_rss_mb"], 1)
        flat["forget %"] = round(100 * row["forget_score"], 1)
        for source in ("forget", "retain"):
            score = row.get("relearn_forget_score", {}).get(source)
            flat[f"after relearn({source}) %"] = None if score is None else round(100 * score, 1)
            value = row.get("relearn", {}).get(source)
            flat[f"recovered({source})"] = None if value is None else round(value, 2)
        flat["MIA AUC"] = None if row.get("mia") is None else round(row["mia"]["auc"], 3)
        rows[method] = flat
    return pd.DataFrame.from_dict(rows, orient="index")


def _write_table(table, path: Path) -> None:
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp)
    with atomic_path(path.with_suffix(".md")) as tmp:
        Path(tmp).write_text(table.to_markdown() + "\n")


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


def compare(vanilla, processor, adapter: PromptAdapter, world: World, out, config: CompareConfig | None = None,
            holdout=None, progress: bool = True) -> Comparison:
    """Run every method of ``config`` from copies of ``vanilla`` and write tables, JSON and figures to ``out``.

    holdout: training-format records of people the vanilla model never saw, for membership inference (``None``
             skips it; :func:`unseen_people` makes them for synthetic worlds).
    """
    from . import viz

    config = config or CompareConfig()
    out = Path(out)
    results, costs, reports, attacks = Results(), {}, {}, {}
    members = training_items(world.forget_train)
    non_members = training_items(holdout) if holdout else None
    for method in config.methods:
        label = LABELS[method]
        model = copy.deepcopy(vanilla)
        with measure() as cost:
            reports[label] = unlearn(method, model, processor, adapter, world, config, progress)
        costs[label] = cost
        results.extend(evaluate(model, processor, adapter, world, config.evaluation, method=label, progress=progress))
        if config.attacks:
            attacks[label] = {}
            if method != "vanilla":
                attacks[label]["relearn"] = relearn_attack(model, processor, adapter, world, config, label, progress)
            if non_members:
                attacks[label]["mia"] = membership_auc(model, processor, adapter, members, non_members)
        del model
    results.save(out / "results.json")
    write_json(out / "cost.json", {m: {**c, "report": reports[m]} for m, c in costs.items()})
    sweep_records, points = Results(), []
    if config.sweeps:
        sweep_records, points = run_sweeps(vanilla, processor, adapter, world, config, progress)
        write_json(out / "sweeps.json", {"points": points, "records": list(sweep_records)})
    summary = summarize(results, costs, attacks, points)
    write_json(out / "attacks.json", {m: {"relearn": {s: list(r) for s, r in a.get("relearn", {}).items()},
                                          "mia": a.get("mia")} for m, a in attacks.items()})
    write_json(out / "summary.json", summary)
    _write_table(paper_table(results, costs), out / "table")
    _write_table(summary_table(summary), out / "summary")
    figures = out / "figures"
    paths = [viz.plot_results(results, figures / "results.png"),
             viz.plot_balance(summary, figures / "balance.png")]
    if points:
        paths.append(viz.plot_tradeoff(points, figures / "tradeoff.png"))
    # The alpha sweep at recall positions holds the main MANU masks too; without sweeps, show the main ones.
    masks = {p["label"]: p["mask"] for p in points if "mask" in p and p["settings"]["positions"] == "recall"} or \
        {LABELS[m]: reports[LABELS[m]]["mask"] for m in config.methods if m in MANU_METHODS}
    if masks:
        paths.append(viz.plot_pruned_heatmap(masks, figures / "pruned_neurons.png"))
    if config.attacks:
        paths.append(viz.plot_robustness(summary, figures / "robustness.png"))
    return Comparison(results, costs, summary, sweep_records, points, attacks, paths)


def summarize(results, costs: dict, attacks: dict, points: list[dict]) -> dict:
    """Per-method drops, balance, cost, relearning recovery and MIA; best methods at <= 5 points retain drop."""
    all_drops = drops(results)
    methods = {}
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
        methods[label] = row
    main_points = [{"label": m, "drops": d} for m, d in all_drops.items() if m != "Vanilla"]
    return {"methods": methods,
            "best_at_5_points_retain": {"main": best_at_retain_budget(main_points),
                                        "sweeps": best_at_retain_budget(points) if points else {}},
            "definition": "drop = vanilla − method in points, mean over MC accuracy, ROUGE-L and cloze accuracy; "
                          "best = largest forget drop with retain drop <= 5 points in both renderings"}


# ------------------------------------------------------------------------------------------- command line
def compare_command(world: World, args) -> str:
    """``manu-lite compare``: load the vanilla model, run :func:`compare` under ``args.out``, return a report."""
    from .workflow import format_table, tiny_vanilla

    config = CompareConfig(seed=args.seed)
    if args.model == "tiny":
        vanilla, processor, adapter = tiny_vanilla(world, args.seed, epochs=args.epochs)
        # Never-seen people for membership inference: a separately seeded synthetic bench.
        holdout = unseen_people(world, Path(args.out), config.mia_people, args.seed + 1) if args.data is None else None
    else:
        from .models import load_mllm

        vanilla, processor, adapter = load_mllm(args.model)
        config = replace(config, unlearn=replace(config.unlearn, lora=True), evaluation=EvalConfig(seed=args.seed),
                         manu_batch_size=4)
        holdout = None
    unlearn_knobs = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    config = replace(config, unlearn=replace(config.unlearn, renderings=args.renderings, seed=args.seed, **unlearn_knobs),
                     manu=replace(config.manu, seed=args.seed, **({"alpha": args.alpha} if args.alpha else {})),
                     sweeps=not args.no_sweeps, attacks=not args.no_attacks,
                     **({"methods": tuple(args.methods.split(","))} if args.methods else {}))
    result = compare(vanilla, processor, adapter, world, args.out, config, holdout=holdout)
    lines = [format_table(result.results), "", "== summary (drops in points from vanilla, mean of tasks) ==",
             summary_table(result.summary).to_string()]
    for scope, best in result.summary["best_at_5_points_retain"].items():
        for rendering, row in best.items():
            lines.append(f"best forget drop at <= 5 points retain drop, {RENDERING_NAMES[rendering]} ({scope}): "
                         f"{row['label']} forget -{row['forget_drop']:.1f} (other rendering -"
                         f"{row['other_rendering_forget_drop']:.1f}), retain -{row['retain_drop']:.1f} "
                         f"(other rendering -{row['other_rendering_retain_drop']:.1f})")
    if holdout is None and config.attacks:
        lines.append("membership inference skipped: no never-seen people for this world (synthetic worlds only)")
    return "\n".join(lines)
