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

