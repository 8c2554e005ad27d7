"""The comparison's scores: drops from vanilla per set and rendering, the modality balance, the best method at a
retain budget, and the distance to the retain model."""
from __future__ import annotations

from .config import RENDERINGS, SETS
from .results import Results


def question_records(details: dict, method: str) -> list[dict]:
    """Per-question scores ``{method, set, rendering, task, id, value}`` from :func:`manu_lite.evaluate.evaluate`'s
    ``details`` (keyed by (set, rendering, task); each entry carries its ``value`` in [0, 1] and the person ``id``),
    in the order evaluated: the input of :func:`bootstrap` and :func:`paired_test`."""
    return [{"method": method, "set": s, "rendering": r, "task": t, "id": d["id"], "value": float(d["value"])}
            for (s, r, t), entries in details.items() for d in entries]


def question_results(questions: list[dict]) -> Results:
    """:class:`~manu_lite.results.Results` (one record per method, set, rendering and task: the mean of its
    questions) from :func:`question_records`, e.g. of a subset of the people, for :func:`drops` and
    :func:`distance_to_retain`."""
    cells: dict = {}
    for q in questions:
        cells.setdefault((q["method"], q["set"], q["rendering"], q["task"]), []).append(q["value"])
    return Results([{"method": m, "set": s, "rendering": r, "task": t, "metric": "mean", "value": sum(v) / len(v),
                     "n": len(v)} for (m, s, r, t), v in cells.items()])


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


def distance_to_retain(results, method: str, retain: str = "Retain") -> dict:
    """Per rendering: mean over every (set, task) of |method − retain| in points (0 = scores like the model that
    never saw the forget people, on forget, test, retain and celebrity alike)."""
    frame = results.frame() if hasattr(results, "frame") else Results(results).frame()
    mean = frame.groupby(["method", "set", "task", "rendering"])["value"].mean()
    out = {}
    for rendering in RENDERINGS:
        gaps = [abs(mean[(method, s, t, r)] - mean[(retain, s, t, r)]) for (m, s, t, r) in mean.index
                if m == method and r == rendering and (retain, s, t, r) in mean.index]
        if gaps:
            out[rendering] = 100 * sum(gaps) / len(gaps)
    return out



# ------------------------------------------------------------------------------------------ bootstrap intervals
class Bootstrap:
    """Seeded, paired bootstrap replicates of every (method, set, rendering, task) mean score.

    ``questions``: :func:`question_records` of several methods evaluated on the same questions. One replicate
    resamples, with replacement, the *units* of each cell and takes every method's mean over the same draw, so the
    methods stay paired (a hard question drawn twice is hard for every model):

    * ``unit="question"``: the questions of each (set, rendering, task) cell, drawn independently per cell;
    * ``unit="person"``: the people of each set, one draw per set shared by its renderings and tasks, each drawn
      person bringing all their questions (a cluster bootstrap: one person's questions are not independent).

    ``point[key]`` is the mean on the data as evaluated and ``draws[key]`` its ``n_boot`` replicates, shape
    ``(n_boot,)``, with ``key = (method, set, rendering, task)`` and values in [0, 1].
    """

    def __init__(self, questions: list[dict], unit: str = "question", n_boot: int = 2000, seed: int = 0):
        import numpy as np

        if unit not in ("question", "person"):
            raise ValueError(f"unknown bootstrap unit {unit!r}; use 'question' or 'person'")
        if n_boot < 1:
            raise ValueError(f"n_boot={n_boot} must be at least 1")
        self.unit, self.n_boot, self.seed = unit, n_boot, seed
        cells: dict = {}
        for q in questions:
            cells.setdefault((q["set"], q["rendering"], q["task"]), {}).setdefault(q["method"], []).append(q)
        if not cells:
            raise ValueError("no per-question records to bootstrap: pass scores.question_records(...) of a run")
        rng = np.random.default_rng(seed)
        person_draws: dict = {}
        self.point, self.draws = {}, {}
        for cell, by_method in sorted(cells.items()):
            ids = _aligned_ids(cell, by_method)
            if unit == "question":
                groups, group_of = len(ids), np.arange(len(ids))
                draw = rng.integers(0, groups, size=(n_boot, groups))
            else:
                people = sorted(set(ids))
                group_of = np.array([people.index(i) for i in ids])
                groups = len(people)
                key = (cell[0], tuple(people))
                if key not in person_draws:
                    person_draws[key] = rng.integers(0, groups, size=(n_boot, groups))
                draw = person_draws[key]
            counts = np.bincount(group_of, minlength=groups).astype(float)
            drawn_counts = counts[draw].sum(1)
            for method, rows in by_method.items():
                values = np.array([r["value"] for r in rows], dtype=float)
                sums = np.bincount(group_of, weights=values, minlength=groups)
                self.point[(method, *cell)] = float(values.mean())
                self.draws[(method, *cell)] = sums[draw].sum(1) / drawn_counts

    def methods(self) -> list[str]:
        return list(dict.fromkeys(key[0] for key in self.point))


def _aligned_ids(cell, by_method: dict) -> list[str]:
    """The person IDs of one cell's questions, the same (in order) for every method, or a clear error."""
    (first, rows), *others = by_method.items()
    ids = [r["id"] for r in rows]
    for method, other in others:
        if [r["id"] for r in other] != ids:
            raise ValueError(f"set/rendering/task {cell}: {method!r} was scored on other questions than {first!r} "
                             f"({len(other)} vs {len(ids)}); bootstrap needs every method on the same questions, "
                             "in the same order (evaluate them on one world)")
    return ids


def _interval(point: float, draws, level: float) -> dict:
    import numpy as np

    low, high = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"value": point, "low": float(low), "high": float(high)}


def distance_replicates(boot: Bootstrap, method: str, rendering: str, retain: str = "Retain"):
    """Distance to the retain model (points; as :func:`distance_to_retain`) on the data and per replicate:
    ``(point, draws of shape (n_boot,))``, or ``(None, None)`` when either model is unscored there."""
    keys = [(s, t) for (m, s, r, t) in boot.point if m == method and r == rendering
            and (retain, s, r, t) in boot.point]
    if not keys:
        return None, None
    point = 100 * sum(abs(boot.point[(method, s, rendering, t)] - boot.point[(retain, s, rendering, t)])
                      for s, t in keys) / len(keys)
    draws = 100 * sum(abs(boot.draws[(method, s, rendering, t)] - boot.draws[(retain, s, rendering, t)])
                      for s, t in keys) / len(keys)
    return point, draws


def distance_intervals(boot: Bootstrap, retain: str = "Retain", level: float = 0.95) -> dict:
    """Percentile intervals of each method's distance to the retain model, per rendering:
    ``{method: {rendering: {"value", "low", "high"}}}`` in points (``value`` equals :func:`distance_to_retain`).
    |·| makes the replicates lean away from 0, so a method that equals the retain model gets an interval above 0."""
    out = {}
    for method in boot.methods():
        if method == retain:
            continue
        for rendering in RENDERINGS:
            point, draws = distance_replicates(boot, method, rendering, retain)
            if point is not None:
                out.setdefault(method, {})[rendering] = _interval(point, draws, level)
    return out


def drop_replicates(boot: Bootstrap, method: str, set_name: str, rendering: str, vanilla: str = "Vanilla"):
    """Drop from vanilla (points, mean over tasks; as :func:`drops`) on the data and per replicate, vanilla and
    ``method`` paired on each draw: ``(point, draws of shape (n_boot,))``, or ``(None, None)`` when unscored."""
    tasks = [t for (m, s, r, t) in boot.point if m == method and s == set_name and r == rendering
             and (vanilla, s, r, t) in boot.point]
    if not tasks:
        return None, None
    point = 100 * sum(boot.point[(vanilla, set_name, rendering, t)] - boot.point[(method, set_name, rendering, t)]
                      for t in tasks) / len(tasks)
    draws = 100 * sum(boot.draws[(vanilla, set_name, rendering, t)] - boot.draws[(method, set_name, rendering, t)]
                      for t in tasks) / len(tasks)
    return point, draws


def drop_intervals(boot: Bootstrap, vanilla: str = "Vanilla", level: float = 0.95) -> dict:
    """Percentile intervals of the drops from vanilla: ``{method: {set: {rendering: {"value", "low", "high"}}}}``
    in points (``value`` equals :func:`drops`)."""
    out = {}
    for method in boot.methods():
        for s in SETS:
            for rendering in RENDERINGS:
                point, draws = drop_replicates(boot, method, s, rendering, vanilla)
                if point is not None:
                    out.setdefault(method, {}).setdefault(s, {})[rendering] = _interval(point, draws, level)
    return out


def pooled_interval(replicates: list[tuple], level: float = 0.95) -> dict:
    """The mean over splits of a statistic and its percentile interval: ``replicates`` holds one
    ``(point, draws)`` per split (independent bootstraps with one ``n_boot``); the interval is that of the mean of
    the splits' replicates. Returns ``{"value", "low", "high", "std"}``, ``std`` the spread of the points over
    the splits (0 for one split)."""
    import numpy as np

    points = [p for p, _ in replicates]
    if len({len(d) for _, d in replicates}) != 1:
        raise ValueError("every split's bootstrap needs the same n_boot")
    out = _interval(float(np.mean(points)), np.mean([d for _, d in replicates], axis=0), level)
    out["std"] = float(np.std(points, ddof=1)) if len(points) > 1 else 0.0
    return out


def paired_distance_test(boots: list[Bootstrap], a: str, b: str, rendering: str, retain: str = "Retain",
                         level: float = 0.95) -> dict:
    """Is ``a`` closer to the retain model than ``b``? A paired bootstrap over splits × questions (or people).

    Tested: the mean over the splits of distance(a) − distance(b), each split's two distances computed on the
    same resampled questions; each split resampled independently (its own :class:`Bootstrap`, which should share
    ``n_boot``). The null hypothesis is a mean difference of 0; ``p`` is the two-sided percentile-bootstrap
    p-value, 2 × the smaller share of replicates on either side of 0 (at least 1/n_boot). The randomness is the
    choice of questions (people) only: each model is one training run, so this says nothing about seeds.
    Returns ``{"difference", "low", "high", "p", "splits", "a_closer_splits"}`` in points.
    """
    import numpy as np

    points, draws = [], []
    for boot in boots:
        pa, da = distance_replicates(boot, a, rendering, retain)
        pb, db = distance_replicates(boot, b, rendering, retain)
        if pa is None or pb is None:
            raise ValueError(f"{a!r} or {b!r} has no distance to {retain!r} in rendering {rendering!r}")
        if len(da) != len(db) or (draws and len(da) != len(draws[0])):
            raise ValueError("every split's bootstrap needs the same n_boot")
        points.append(pa - pb)
        draws.append(da - db)
    mean = np.mean(draws, axis=0)
    n = len(mean)
    p = min(1.0, max(2 * min((mean <= 0).sum(), (mean >= 0).sum()) / n, 1 / n))
    result = _interval(float(np.mean(points)), mean, level)
    return {"difference": result["value"], "low": result["low"], "high": result["high"], "p": float(p),
            "splits": len(boots), "a_closer_splits": int(sum(d < 0 for d in points))}
