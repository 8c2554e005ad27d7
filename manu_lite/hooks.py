"""Find the MLP neurons of a multimodal LLM and record their activations.

A *neuron* is one unit of an MLP's intermediate layer. For a Llama-style MLP
``down_proj(act(gate_proj x) * up_proj x)`` the neuron activations are the **input of** ``down_proj``; for a
CLIP/ViT-style MLP ``fc2(act(fc1 x))`` they are the input of ``fc2``. A :class:`NeuronSite` names one such MLP
(``"language.3.down_proj"``, ``"vision.1.fc2"``), and :func:`record_neurons` attaches a forward pre-hook to its
output projection, in the spirit of TransformerLens' hook points, as a context manager that always cleans up.

Sites are found by *structure*, not by hard-coded paths, so the same code serves LLaVA, Qwen2-VL, Idefics2/3 and
other ``transformers`` MLLMs::

    sites = find_sites(model)                      # [NeuronSite('language.0.down_proj', width=11008), ...]
    with record_neurons(model, sites, lambda site, acts: print(site.name, acts.shape)):
        model(**inputs)
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .config import POSITIONS, TOWERS

# The MLP shapes we know: (input projections, output projection). Order matters: gated first.
# ``register_mlp_layout`` adds more (e.g. Mixtral-style ``w1``/``w3``/``w2``).
MLP_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gate_proj", "up_proj"), "down_proj"),
    (("fc1",), "fc2"),
)
# Names that suggest a module is an MLP, used only to explain a failed search.
_MLP_LIKE = re.compile(r"mlp|ffn|feed_?forward|ff$|mlp_block", re.IGNORECASE)
# Path components marking the vision tower (CLIP "vision_tower", Idefics "vision_model", Qwen2-VL "visual").
_VISION_PART = re.compile(r"vision|visual", re.IGNORECASE)
# Modules *between* the towers: LLaVA's multi_modal_projector, Idefics' connector (with its perceiver resampler,
# whose layers hold gate/up/down MLPs), Qwen2-VL's visual.merger. They are not tower neurons.
_BRIDGE_PART = re.compile(r"projector|connector|merger|resampler|perceiver|adapter", re.IGNORECASE)


@dataclass(frozen=True)
class NeuronSite:
    """One MLP whose intermediate units are scored and pruned.

    tower:    ``"language"`` or ``"vision"``.
    layer:    index of the decoder/encoder layer that holds the MLP.
    mlp:      the MLP module itself.
    in_projs: attribute names of the projections that *produce* the neurons, e.g. ``("gate_proj", "up_proj")``.
    out_proj: attribute name of the projection that *reads* the neurons, e.g. ``"down_proj"``; its input,
              of shape ``[..., width]``, is what :func:`record_neurons` reports.
    width:    number of neurons (the intermediate size).
    path:     the module path of ``mlp`` in the model (informational).
    """

    tower: str
    layer: int
    mlp: nn.Module
    in_projs: tuple[str, ...]
    out_proj: str
    width: int
    path: str = ""

    def __post_init__(self):
        if self.tower not in TOWERS:
            raise ValueError(f"NeuronSite tower {self.tower!r} is unknown; use one of {TOWERS}")
        for attr in (*self.in_projs, self.out_proj):
            if not isinstance(getattr(self.mlp, attr, None), nn.Module):
                raise ValueError(f"NeuronSite {self.name!r}: the MLP {type(self.mlp).__name__} has no submodule "
                                 f"{attr!r}; in_projs/out_proj must name its projection attributes")

    @property
    def name(self) -> str:
        """``"{tower}.{layer}.{out_proj}"``, the key used by statistics, scores and masks."""
        return f"{self.tower}.{self.layer}.{self.out_proj}"

    @property
    def out_module(self) -> nn.Module:
        return getattr(self.mlp, self.out_proj)

    @property
    def in_modules(self) -> tuple[nn.Module, ...]:
        return tuple(getattr(self.mlp, p) for p in self.in_projs)

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        return f"NeuronSite({self.name!r}, width={self.width}{where})"


def site_tower(name: str) -> str:
    """The tower of a site name such as ``"vision.1.fc2"``."""
    return name.split(".", 1)[0]


def site_layer(name: str) -> int:
    """The layer index of a site name such as ``"vision.1.fc2"``."""
    return int(name.split(".")[1])


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` computes: its first own parameter's device, or — when accelerate offloaded its weights to
    the ``meta`` device (``device_map`` with CPU/disk offload, ``cpu_offload``) — its hook's execution device.
    ``None`` for a module without parameters of its own."""
    params = list(module.parameters(recurse=False))
    execution = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if execution is not None and any(p.device.type == "meta" for p in params):
        return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    return next((p.device for p in params if p.device.type != "meta"), None)


def _width(module: nn.Module) -> int | None:
    width = getattr(module, "in_features", None)  # nn.Linear and quantized subclasses (bitsandbytes) keep it
    return int(width) if width is not None else None


def register_mlp_layout(in_projs: Iterable[str], out_proj: str) -> None:
    """Teach :func:`find_sites` (and so statistics, masks and ``manu_unlearn``) a new MLP layout.

    in_projs: attribute names of the projections that produce the neurons, e.g. ``("w1", "w3")``.
    out_proj: attribute name of the projection that reads them (its ``in_features`` is the width), e.g. ``"w2"``.

    The layout is tried after the built-in ones; registering the same layout twice is a no-op. Every
    projection must be an ``nn.Linear`` (or a subclass, e.g. a quantized one) for a module to match.
    """
    global MLP_LAYOUTS
    layout = (tuple(in_projs), str(out_proj))
    if not layout[0] or not all(isinstance(p, str) and p for p in (*layout[0], layout[1])):
        raise ValueError(f"a layout is (non-empty tuple of input projection names, output projection name), "
                         f"got {layout!r}")
    if layout not in MLP_LAYOUTS:
        MLP_LAYOUTS = (*MLP_LAYOUTS, layout)


def _match_layout(module: nn.Module) -> tuple[tuple[str, ...], str] | None:
    """The (in_projs, out_proj) layout of an MLP module, or None when it is not one of ours."""
    for in_projs, out_proj in MLP_LAYOUTS:
        parts = [getattr(module, a, None) for a in (*in_projs, out_proj)]
        if all(isinstance(p, nn.Module) and _width(p) is not None for p in parts):
            return in_projs, out_proj
    return None


def unused_layers(model: nn.Module) -> dict[int, str]:
    """Vision encoder layers whose output never reaches the language model: layer index → reason.

    LLaVA-style models read the vision features from ``hidden_states[config.vision_feature_layer]`` (LLaVA-1.5:
    ``-2``), so the encoder layers after it run but nothing downstream reads them: their MLP neurons cannot matter
    and are no candidates. ``hidden_states[h]`` is the output of layer ``h − 1`` (``hidden_states[0]`` is the
    embedding), so layers ``>= h`` (``h`` made non-negative) are unused. A list of feature layers (LLaVA-NeXT
    variants) uses up to its largest. Models without ``vision_feature_layer`` report nothing.
    """
    config = getattr(model, "config", None)
    feature = getattr(config, "vision_feature_layer", None)
    n_layers = getattr(getattr(config, "vision_config", None), "num_hidden_layers", None)
    if feature is None or n_layers is None:
        return {}
    features = list(feature) if isinstance(feature, (list, tuple)) else [feature]
    last = max(int(h) + n_layers + 1 if int(h) < 0 else int(h) for h in features)
    return {layer: f"vision_feature_layer={feature!r} reads hidden_states up to index {last}: layer {layer}'s "
                   "output never reaches the language model" for layer in range(last, n_layers)}


def unused_sites(model: nn.Module, towers: Iterable[str] = TOWERS) -> dict[str, str]:
    """Sites :func:`find_sites` leaves out because the model never uses their output (see :func:`unused_layers`):
    site name → reason."""
    layers = unused_layers(model)
    if not layers or "vision" not in tuple(towers):
        return {}
    return {s.name: layers[s.layer] for s in find_sites(model, ("vision",)) if s.layer in layers}


def candidate_sites(model: nn.Module, towers: Iterable[str] = TOWERS) -> list[NeuronSite]:
    """:func:`find_sites` without :func:`unused_sites`: the sites MANU scores, and whose neurons alpha counts."""
    unused = unused_sites(model, towers)
    return [s for s in find_sites(model, towers) if s.name not in unused]


def find_sites(model: nn.Module, towers: Iterable[str] = TOWERS) -> list[NeuronSite]:
    """Every MLP neuron site of ``model`` in the given towers, ordered by (tower, layer).

    This lists every MLP, used or not; :func:`unused_sites` names those whose output never reaches the language
    model (MANU drops them from its candidates: :func:`candidate_sites`).

    An MLP is a module with ``gate_proj``/``up_proj``/``down_proj`` children or ``fc1``/``fc2`` children. Its
    tower is ``"vision"`` when a component of its path mentions vision/visual, else ``"language"``; its layer is
    the last integer in its path (the index in the decoder/encoder layer list). MLPs of the bridge between the
    towers (projector, connector, merger, perceiver resampler) are excluded, as are MLPs outside a layer list.

    Raises ``ValueError`` when nothing is found (listing what was examined) or when two MLPs would share a name.
    """
    towers = tuple(towers)
    for tower in towers:
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}; choose from {TOWERS}")
    sites: dict[str, NeuronSite] = {}
    examined: list[str] = []
    for path, module in model.named_modules():
        layout = _match_layout(module)
        if layout is None:
            continue
        examined.append(f"{path} ({type(module).__name__})")
        parts = path.split(".")
        if any(_BRIDGE_PART.search(p) for p in parts):
            continue
        layers = [int(p) for p in parts if p.isdigit()]
        if not layers:
            continue
        tower = "vision" if any(_VISION_PART.search(p) for p in parts) else "language"
        if tower not in towers:
            continue
        in_projs, out_proj = layout
        site = NeuronSite(tower=tower, layer=layers[-1], mlp=module, in_projs=in_projs, out_proj=out_proj,
                          width=_width(getattr(module, out_proj)), path=path)
        if site.name in sites:
            raise ValueError(f"two MLPs map to the site name {site.name!r}: {sites[site.name].path!r} and "
                             f"{path!r}; pass sites=[NeuronSite(...)] by hand with distinct layers")
        sites[site.name] = site
    if not sites:
        raise ValueError(_nothing_found(model, towers, examined))
    return sorted(sites.values(), key=lambda s: (TOWERS.index(s.tower), s.layer, s.name))


def _nothing_found(model: nn.Module, towers: tuple[str, ...], examined: list[str]) -> str:
    """The message of :func:`find_sites` when no site matched: what was found, why it did not count, what to do."""
    layouts = " or ".join(f"{'/'.join(i)} -> {o}" for i, o in MLP_LAYOUTS)
    lines = []
    for path, module in model.named_modules():
        children = list(module.named_children())
        linear = [n for n, c in children if isinstance(c, nn.Linear)]
        mlp_like = bool(_MLP_LIKE.search(path.rsplit(".", 1)[-1])) and bool(children)
        if _match_layout(module) is not None or not (mlp_like or len(linear) >= 2):
            continue
        names = ", ".join(f"{n} ({type(c).__name__}" + (f" {c.in_features}->{c.out_features})"
                                                         if _width(c) is not None else ")") for n, c in children)
        named = {n for n, _ in children}
        near = [(i, o) for i, o in MLP_LAYOUTS if named >= {*i, o}]
        why = (f"has {'/'.join(near[0][0])}/{near[0][1]} but they are not nn.Linear layers with in_features"
               if near else f"not a known layout ({layouts})")
        lines.append(f"{path or '(root)'} ({type(module).__name__}): children {names}; {why}")
        if len(lines) == 8:
            lines.append("… (more omitted)")
            break
    for entry in examined:  # matched a layout but was skipped
        lines.append(f"{entry}: a known layout, but a bridge between towers, outside a numbered layer list, or "
                     f"in a tower not asked for ({towers})")
    found = "\n  ".join(lines) or "(no module named like an MLP, and none with two or more nn.Linear children)"
    example = next((ln.split(" (", 1)[0] for ln in lines if ": children" in ln), "model.model.layers[0].mlp")
    return (f"no MLP neuron sites found in {type(model).__name__} for towers {towers}. Known layouts: {layouts}. "
            f"Found:\n  {found}\n"
            "To use this model, either register its MLP layout once for every model of the family:\n"
            "  manu_lite.hooks.register_mlp_layout(in_projs=('w1', 'w3'), out_proj='w2')\n"
            "or, for statistics only (masks and manu_unlearn find sites by layout), pass sites by hand:\n"
            f"  collect_stats(model, batches, sites=[NeuronSite(tower='language', layer=0, mlp=<the module at "
            f"{example}>, in_projs=('w1', 'w3'), out_proj='w2', width=<w2.in_features>), ...])")


@contextlib.contextmanager
def record_neurons(model: nn.Module, sites: Iterable[NeuronSite],
                   fn: Callable[[NeuronSite, torch.Tensor], None]) -> Iterator[list[NeuronSite]]:
    """Call ``fn(site, activations)`` whenever a site's output projection runs, inside the ``with`` block.

    ``activations`` is the input of ``out_proj``, shape ``[..., width]`` (``[B, T, width]`` in the language
    model, ``[n_images, patches, width]`` or ``[patches, width]`` in a vision tower). ``fn`` must not modify it.
    Hooks are forward *pre*-hooks on ``out_proj``; they are removed on exit, also when the block raises.
    """
    sites = list(sites)
    owned = {id(m) for m in model.modules()}
    strangers = [s.name for s in sites if id(s.mlp) not in owned]
    if strangers:
        raise ValueError(f"sites {strangers} belong to another model instance; call find_sites(model) on this one")
    handles = []
    try:
        for site in sites:
            # Bind the site now: a closure over the loop variable would see only the last site.
            def hook(module, args, site=site):
                fn(site, args[0])
            handles.append(site.out_module.register_forward_pre_hook(hook))
        yield sites
    finally:
        for handle in handles:
            handle.remove()


def token_mask_from_batch(batch: Mapping[str, torch.Tensor], positions: str) -> torch.Tensor:
    """Which token positions of a batch feed the language-model statistics, as a bool ``[B, T]`` tensor.

    ``"all"``:    every non-padding position (``attention_mask``; every position when there is none).
    ``"recall"``: positions ``t`` whose *next* token is an answer token, ``labels[:, t + 1] != -100`` — the
                  positions whose prediction recalls the fact — restricted to non-padding positions.
    """
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose one of {POSITIONS}")
    input_ids = batch.get("input_ids")
    if input_ids is None:
        raise ValueError("the batch has no 'input_ids'; a batch is a dict of model inputs plus 'labels'")
    attention = batch.get("attention_mask")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention is None else attention.bool()
    if positions == "all":
        return mask
    labels = batch.get("labels")
    if labels is None:
        raise ValueError("positions='recall' needs 'labels' in the batch (-100 everywhere except answer tokens); "
                         "add them or use positions='all'")
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}; "
                         "they must align token by token")
    recall = torch.zeros_like(mask)
    recall[:, :-1] = labels[:, 1:] != -100
    return recall & mask
