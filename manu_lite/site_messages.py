"""The messages of site discovery (:mod:`manu_lite.sites`): what it saw where sites are missing, and how to fix it
(a ``register_mlp_layout`` call guessed from the shapes, or ``strict=False``). ``rows`` are the site table's rows."""
from __future__ import annotations

from torch import nn


def linear_width(module: nn.Module) -> int | None:
    width = getattr(module, "in_features", None)  # nn.Linear and quantized subclasses (bitsandbytes) keep it
    return int(width) if width is not None else None


def describe_module(module: nn.Module) -> str:
    """``"w1 (Linear 16->32), act (SiLU)"``: a module's children with their types and Linear shapes."""
    return ", ".join(f"{n} ({type(c).__name__}" + (f" {c.in_features}->{c.out_features})"
                                                   if linear_width(c) is not None else ")")
                     for n, c in module.named_children())


def suggest_layout(module: nn.Module) -> tuple[tuple[str, ...], str] | None:
    """A guess at ``module``'s (in_projs, out_proj) from its Linear children's shapes: the output projection
    reads ``w`` and writes ``h``; the input projections read ``h`` and write ``w`` (or ``2w``, fused)."""
    linear = [(n, c) for n, c in module.named_children()
              if linear_width(c) is not None and getattr(c, "out_features", None) is not None]
    best, key = None, None
    for name, out in linear:
        width = out.in_features
        ins = tuple(n for n, c in linear if n != name and c.in_features == out.out_features
                    and c.out_features in (width, 2 * width))
        if ins and (key is None or (len(ins), width / out.out_features) > key):
            best, key = (ins, name), (len(ins), width / out.out_features)
    return best


def fix_hint(rows: list, without: str) -> str:
    """What to do about the modules ``rows`` seen where sites are missing: register the layout of the first
    unrecognized MLP (a guess from its shapes), or, where only routed experts are, go on without them knowingly."""
    for row in rows:
        if row.kind == "unrecognized":
            guess = suggest_layout(row.module)
            call = (f"manu_lite.hooks.register_mlp_layout(in_projs={guess[0]!r}, out_proj={guess[1]!r})  # a guess "
                    f"from the shapes of {row.path}" if guess is not None else
                    "manu_lite.hooks.register_mlp_layout(in_projs=('w1', 'w3'), out_proj='w2')")
            return (f"To fix it, register the MLP layout once for the model family:\n  {call}\n"
                    f"(or pass strict=False to go on without {without}, with a warning)")
    if rows and all(row.kind == "experts" for row in rows):
        return ("manu_lite does not score routed experts with fused weights, so no layout can be registered for "
                f"them: pass strict=False to go on without {without} (their experts stay untouched; say so with "
                "the results), or score them with your own hooks")
    return ("To fix it, register the MLP layout once for the model family, e.g.\n"
            "  manu_lite.hooks.register_mlp_layout(in_projs=('w1', 'w3'), out_proj='w2')\n"
            f"(or pass strict=False to go on without {without}, with a warning)")


def rows_listing(rows: list, limit: int = 8) -> str:
    lines = [r.line() for r in rows[:limit]] + ([f"… ({len(rows) - limit} more)"] if len(rows) > limit else [])
    return "\n  ".join(lines)


def tower_missing(model: nn.Module, tower: str, towers: tuple[str, ...], rows: list) -> str:
    """The message when a requested tower found no site while another did."""
    seen = [r for r in rows if r.tower == tower]
    others = sorted({r.site.tower for r in rows if r.site is not None})
    head = (f"find_sites: the {tower} tower of {type(model).__name__} has no MLP neuron site, so MANU would score "
            f"and prune the {' and '.join(others)} tower only (towers={towers}).")
    if not seen:
        where = ("no module path has a vision/visual/image/img component" if tower == "vision"
                 else "every MLP-like module is in the vision tower, a bridge or an audio encoder")
        return (f"{head} It saw no MLP-like module there ({where}). If the model has no {tower} tower, pass "
                f"towers={tuple(t for t in towers if t != tower)!r}; if it has one under another name, pass its "
                f"sites by hand: NeuronSite(tower={tower!r}, layer=..., mlp=..., in_projs=(...), out_proj=..., "
                "width=...); strict=False warns instead of raising.")
    return f"{head} MLP-like modules it saw there:\n  {rows_listing(seen)}\n{fix_hint(seen, 'this tower')}"


def missing_layers(model: nn.Module, sites: list, rows: list) -> list[str]:
    """One message per layer list of a tower in which some numbered layers have no site."""
    containers: dict[tuple[str, str], set[int]] = {}
    for site in sites:
        parts = site.path.split(".")
        last = max(i for i, p in enumerate(parts) if p.isdigit())
        containers.setdefault((site.tower, ".".join(parts[:last])), set()).add(site.layer)
    problems = []
    for (tower, path), layers in sorted(containers.items()):
        try:
            container = model.get_submodule(path)
        except AttributeError:
            continue
        expected = sorted(int(n) for n, _ in container.named_children() if n.isdigit())
        missing = [layer for layer in expected if layer not in layers]
        if not missing:
            continue
        prefix = f"{path}." if path else ""
        seen = [r for r in rows if any(r.path.startswith(f"{prefix}{m}.") or r.path == f"{prefix}{m}"
                                       for m in missing)]
        first = container.get_submodule(str(missing[0]))
        listing = (rows_listing(seen) if seen else
                   f"{prefix}{missing[0]} ({type(first).__name__}): children {describe_module(first)}; no MLP-like module")
        problems.append(
            f"find_sites: {tower} layer(s) {missing} of {path or '(root)'} ({len(expected)} layers) have no MLP "
            f"neuron site, so MANU would skip them without a word. MLP-like modules it saw there:\n  {listing}\n"
            f"{fix_hint(seen, 'these layers')}")
    return problems


def nothing_found(model: nn.Module, towers: tuple[str, ...], rows: list, layouts) -> str:
    """The message of :func:`find_sites` when no site matched: what was found, why it did not count, what to do."""
    layouts = " or ".join(f"{'/'.join(i)} -> {o}" for i, o in layouts)
    unknown = [r for r in rows if r.kind == "unrecognized"]
    lines = [r.line() for r in unknown[:8]] + (["… (more omitted)"] if len(unknown) > 8 else [])
    lines += [r.line() for r in rows if r.kind in ("excluded", "experts")]
    found = "\n  ".join(lines) or "(no module named like an MLP, and none with two or more nn.Linear children)"
    example = next((r.path for r in unknown if r.path), "model.model.layers[0].mlp")
    guess = next((g for g in map(lambda r: suggest_layout(r.module), unknown) if g is not None), None)
    register = (f"  manu_lite.hooks.register_mlp_layout(in_projs={guess[0]!r}, out_proj={guess[1]!r})  # a guess "
                "from the shapes" if guess and len(guess[0]) and not guess[1].isdigit() else
                "  manu_lite.hooks.register_mlp_layout(in_projs=('w1', 'w3'), out_proj='w2')")
    return (f"no MLP neuron sites found in {type(model).__name__} for towers {towers}. Known layouts: {layouts}. "
            f"Found:\n  {found}\n"
            "To use this model, either register its MLP layout once for every model of the family:\n"
            f"{register}\n"
            "or, for statistics only (masks and manu_unlearn find sites by layout), pass sites by hand:\n"
            f"  collect_stats(model, batches, sites=[NeuronSite(tower='language', layer=0, mlp=<the module at "
            f"{example}>, in_projs=('w1', 'w3'), out_proj='w2', width=<w2.in_features>), ...])")

