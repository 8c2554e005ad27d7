"""Where the MLP neurons of a multimodal LLM are: :class:`NeuronSite`, the known layouts, discovery by structure
(:func:`find_sites`, :func:`site_table`, :func:`unused_sites`); nothing is dropped in silence (messages in
:mod:`manu_lite.site_messages`). :mod:`manu_lite.hooks` records the activations of the sites found here."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .config import TOWERS
from .site_messages import describe_module, linear_width, missing_layers, nothing_found, tower_missing

# The MLP shapes we know: (input projections, output projection), gated first; ``register_mlp_layout`` adds more.
# A fused input projection stacks blocks of ``width`` rows (gate, then up): ``fused`` is read from the shapes.
MLP_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gate_proj", "up_proj"), "down_proj"),  # Llama, Qwen, Gemma text; Qwen2.5-VL vision
    (("gate_up_proj",), "down_proj"),  # fused gate/up halves: Phi-3, Phi-4(-multimodal)
    (("fc1",), "fc2"),  # CLIP, SigLIP, ViT vision encoders
    (("linear_fc1",), "linear_fc2"),  # Qwen3-VL vision
)
# Names that suggest a module is an MLP, used to explain a failed search and to fill the site table.
_MLP_LIKE = re.compile(r"mlp|ffn|feed_?forward|ff$|mlp_block|experts?$", re.IGNORECASE)
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
# Path components marking the vision tower (CLIP "vision_tower", Idefics "vision_model", Qwen2-VL "visual",
# Phi-4-multimodal "image_embed"/"img_processor").
_VISION_PART = re.compile(r"vision|visual|(?:^|_)(?:image|img)(?:_|$)", re.IGNORECASE)
# Modules *between* the towers: LLaVA's multi_modal_projector, Idefics' connector (with its perceiver resampler,
# whose layers hold gate/up/down MLPs), Qwen2-VL's visual.merger. They are not tower neurons.
_BRIDGE_PART = re.compile(r"projector|connector|merger|resampler|perceiver|adapter", re.IGNORECASE)
# Towers of other modalities (Phi-4-multimodal's audio encoder): not MANU's language/vision neurons.
_OTHER_TOWER_PART = re.compile(r"audio|speech", re.IGNORECASE)
# A list of routed experts, each an MLP module (``...mlp.experts.5``): its index is an expert, not a layer.
_EXPERT_LIST = re.compile(r"^experts?$", re.IGNORECASE)


class SiteWarning(UserWarning):
    """:func:`find_sites` left neurons out: routed MoE experts, or (with ``strict=False``) a tower or layers."""


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
    fused:    how many blocks of ``width`` rows each input projection stacks: 1, or 2 for a fused
              ``gate_up_proj`` (gate rows ``[0, width)``, up rows ``[width, 2 width)``, split by ``chunk(2)``);
              neuron ``i`` is then fed by rows ``i`` and ``i + width`` (:meth:`in_rows`).
    """

    tower: str
    layer: int
    mlp: nn.Module
    in_projs: tuple[str, ...]
    out_proj: str
    width: int
    path: str = ""
    fused: int = 1

    def __post_init__(self):
        if self.tower not in TOWERS:
            raise ValueError(f"NeuronSite tower {self.tower!r} is unknown; use one of {TOWERS}")
        for attr in (*self.in_projs, self.out_proj):
            if not isinstance(getattr(self.mlp, attr, None), nn.Module):
                raise ValueError(f"NeuronSite {self.name!r}: the MLP {type(self.mlp).__name__} has no submodule "
                                 f"{attr!r}; in_projs/out_proj must name its projection attributes")
        if not isinstance(self.fused, int) or self.fused < 1:
            raise ValueError(f"NeuronSite {self.name!r}: fused={self.fused!r} must be a positive integer (2 for a "
                             "fused gate_up_proj, else 1)")
        width = linear_width(self.out_module)
        if width is not None and width != self.width:
            raise ValueError(f"NeuronSite {self.name!r}: width={self.width} but {self.out_proj}.in_features is "
                             f"{width}; pass width={width} (the output projection's in_features)")
        for attr in self.in_projs:
            rows = getattr(getattr(self.mlp, attr), "out_features", None)
            if rows is not None and rows != self.fused * self.width:
                raise ValueError(f"NeuronSite {self.name!r}: {attr} has {rows} output rows but fused x width is "
                                 f"{self.fused} x {self.width}; set fused to the number of width-row blocks it "
                                 "stacks (a fused gate_up_proj: fused=2)")

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

    def in_rows(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows of every input projection that feed neurons ``indices``: the indices themselves, and for a
        fused projection also ``indices + width`` (the up half), …"""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self.fused == 1:
            return indices
        return torch.cat([indices + block * self.width for block in range(self.fused)])

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        fused = f", fused={self.fused}" if self.fused != 1 else ""
        return f"NeuronSite({self.name!r}, width={self.width}{fused}{where})"


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


def register_mlp_layout(in_projs: Iterable[str], out_proj: str) -> None:
    """Teach :func:`find_sites` (and so statistics, masks and ``manu_unlearn``) a new MLP layout.

    in_projs: attribute names of the projections that produce the neurons, e.g. ``("w1", "w3")``.
    out_proj: attribute name of the projection that reads them (its ``in_features`` is the width), e.g. ``"w2"``.

    The layout is tried after the built-in ones; registering the same layout twice is a no-op. Every
    projection must be an ``nn.Linear`` (or a subclass, e.g. a quantized one) for a module to match, and every
    input projection must have ``k x width`` output rows for one ``k``: ``k = 1`` for separate projections, ``k = 2``
    for a fused ``[gate; up]`` projection split by ``chunk(2)`` (``NeuronSite.fused``). A projection that
    interleaves gate and up rows is not this layout: pass such sites by hand.
    """
    global MLP_LAYOUTS
    layout = (tuple(in_projs), str(out_proj))
    if not layout[0] or not all(isinstance(p, str) and p for p in (*layout[0], layout[1])):
        raise ValueError(f"a layout is (non-empty tuple of input projection names, output projection name), "
                         f"got {layout!r}")
    if layout not in MLP_LAYOUTS:
        MLP_LAYOUTS = (*MLP_LAYOUTS, layout)


def _fused_blocks(ins: list[nn.Module], width: int) -> int | None:
    """How many ``width``-row blocks every input projection stacks (the same for all), or None if they disagree."""
    rows = {getattr(m, "out_features", None) for m in ins}
    if len(rows) != 1 or None in rows or width <= 0:
        return None
    (count,) = rows
    return int(count) // width if count >= width and count % width == 0 else None


def _match_layout(module: nn.Module) -> tuple[tuple[str, ...], str, int] | None:
    """The (in_projs, out_proj, fused) layout of an MLP module, or None when it is not one of ours."""
    for in_projs, out_proj in MLP_LAYOUTS:
        parts = [getattr(module, a, None) for a in (*in_projs, out_proj)]
        if all(isinstance(p, nn.Module) and linear_width(p) is not None for p in parts):
            fused = _fused_blocks(parts[:-1], linear_width(parts[-1]))
            if fused is not None:
                return in_projs, out_proj, fused
    return None


def _fused_experts(module: nn.Module) -> str | None:
    """A description of ``module``'s fused routed-expert weights (two or more 3-D parameters ``[experts, …]``, as
    Llama-4's ``Llama4TextExperts`` and transformers 5's Mixtral/Qwen-MoE experts keep them), or None."""
    params = [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() == 3]
    if len(params) < 2 or len({p.shape[0] for _, p in params}) != 1 or params[0][1].shape[0] < 2:
        return None
    return f"{params[0][1].shape[0]} experts, " + ", ".join(f"{n} {tuple(p.shape)}" for n, p in params)


def _place(path: str) -> tuple[str | None, str | None]:
    """(tower, None) for a module path, or (None, why it belongs to no tower)."""
    parts = path.split(".")
    if any(_BRIDGE_PART.search(p) for p in parts):
        return None, "a bridge between the towers (projector, connector, merger, resampler, adapter), not tower neurons"
    if any(_OTHER_TOWER_PART.search(p) for p in parts):
        return None, "an audio/speech encoder: MANU scores the language and vision towers only"
    return ("vision" if any(_VISION_PART.search(p) for p in parts) else "language"), None


def _why_not(module: nn.Module) -> str:
    """Why an MLP-like module matches none of :data:`MLP_LAYOUTS`."""
    named = dict(module.named_children())
    for in_projs, out_proj in MLP_LAYOUTS:
        if set(named) >= {*in_projs, out_proj}:
            parts = [named[a] for a in (*in_projs, out_proj)]
            if not all(linear_width(p) is not None for p in parts):
                return f"has {'/'.join(in_projs)}/{out_proj} but they are not nn.Linear layers with in_features"
            return (f"has {'/'.join(in_projs)}/{out_proj} but their widths disagree ({out_proj} reads "
                    f"{linear_width(parts[-1])}, the inputs write {[getattr(p, 'out_features', None) for p in parts[:-1]]})")
    layouts = " or ".join(f"{'/'.join(i)} -> {o}" for i, o in MLP_LAYOUTS)
    return f"not a known layout ({layouts})"


@dataclass
class _Found:
    """One MLP-like module and what discovery made of it (a row of :func:`site_table`)."""

    path: str
    module: nn.Module
    kind: str  # "site", "excluded", "experts" (routed, fused weights), "unrecognized"
    tower: str | None
    layer: int | None
    layout: str = ""
    width: int | None = None
    site: NeuronSite | None = None
    reason: str = ""

    def line(self) -> str:
        where = f"{self.path or '(root)'} ({type(self.module).__name__})"
        if self.kind == "unrecognized":
            return f"{where}: children {describe_module(self.module)}; {self.reason}"
        return f"{where}: {self.reason}"


def _survey(model: nn.Module, towers: tuple[str, ...]) -> list[_Found]:
    """Every MLP-like module of ``model``: sites, MLPs left out (and why), routed experts, unknown layouts."""
    found = []
    for path, module in model.named_modules():
        parts = path.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        layer = int(parts[digits[-1]]) if digits else None
        tower, elsewhere = _place(path)
        layout = _match_layout(module)
        if layout is not None:
            in_projs, out_proj, fused = layout
            width = linear_width(getattr(module, out_proj))
            text = f"{'/'.join(in_projs)} -> {out_proj}" + (f" (fused x{fused})" if fused > 1 else "")
            row = _Found(path, module, "excluded", tower, layer, text, width)
            expert_list = [i for i in digits if i > 0 and _EXPERT_LIST.match(parts[i - 1])]
            if elsewhere:
                row.reason = elsewhere
            elif expert_list:
                row.kind, row.layer = "experts", (int(parts[digits[-2]]) if len(digits) > 1 else None)
                row.reason = (f"routed expert {parts[expert_list[-1]]} of a mixture of experts: NOT scored (its index "
                              "is an expert, not a layer; manu_lite scores dense MLPs and shared experts only)")
            elif layer is None:
                row.reason = "a known layout outside a numbered layer list (e.g. a pooling head), not a layer's MLP"
            elif tower not in towers:
                row.reason = f"in the {tower} tower, which was not asked for (towers={towers})"
            else:
                row.kind, row.reason = "site", "scored"
                row.site = NeuronSite(tower=tower, layer=layer, mlp=module, in_projs=in_projs, out_proj=out_proj,
                                      width=width, path=path, fused=fused)
            found.append(row)
            continue
        experts = _fused_experts(module)
        if experts is not None:
            found.append(_Found(path, module, "experts", tower, layer, "fused expert parameters", None,
                                reason=f"routed experts with fused per-expert weights ({experts}): NOT scored — "
                                       "their neurons have no nn.Linear output projection to hook, so MANU leaves "
                                       "them untouched (only dense MLPs and shared experts are scored)"))
            continue
        children = list(module.named_children())
        linear = [c for _, c in children if isinstance(c, nn.Linear)]
        name = parts[-1]
        if (_MLP_LIKE.search(name) and children) or (len(linear) >= 2 and not _ATTENTION.search(name)):
            if not any(path.startswith(f"{f.path}.") for f in found if f.kind != "unrecognized" and f.path):
                found.append(_Found(path, module, "excluded", None, layer, reason=elsewhere) if elsewhere else
                             _Found(path, module, "unrecognized", tower, layer, reason=_why_not(module)))
    # A container of known modules (Llama-4's Llama4TextMoe: router, experts, shared_expert) explains nothing.
    known = [f.path for f in found if f.kind != "unrecognized"]
    return [f for f in found if f.kind != "unrecognized"
            or not any(k.startswith(f"{f.path}.") or not f.path for k in known)]


def site_table(model: nn.Module, towers: Iterable[str] = TOWERS) -> list[dict]:
    """Every MLP-like module of ``model`` and what :func:`find_sites` makes of it, one dict per module:

    ``path``, ``module`` (class name), ``tower`` (``None`` for a bridge or an audio encoder), ``layer``,
    ``layout`` (e.g. ``"gate_up_proj -> down_proj (fused x2)"``), ``width``, ``site`` (the site name when it is
    scored), ``status`` — ``"site"``, ``"excluded"`` (a known layout left out: bridge, audio, outside a layer list,
    a tower not asked for), ``"experts"`` (routed MoE experts: not scored) or ``"unrecognized"`` (looks like an MLP
    but matches no layout; see :func:`register_mlp_layout`) — and ``reason``. ``pandas.DataFrame(site_table(m))``
    shows it as a table.
    """
    towers = _check_towers(towers)
    return [{"path": f.path, "module": type(f.module).__name__, "tower": f.tower, "layer": f.layer,
             "layout": f.layout, "width": f.width, "site": f.site.name if f.site else None, "status": f.kind,
             "reason": f.reason if f.kind != "unrecognized" else f"children {describe_module(f.module)}; {f.reason}"}
            for f in _survey(model, towers)]


def _check_towers(towers: Iterable[str]) -> tuple[str, ...]:
    towers = tuple(towers)
    for tower in towers:
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}; choose from {TOWERS}")
    return towers


def unused_layers(model: nn.Module) -> dict[int, str]:
    """Vision encoder layers whose output never reaches the language model: layer index → reason.

    LLaVA-style models read the vision features from ``hidden_states[config.vision_feature_layer]`` (LLaVA-1.5:
    ``-2``), so the encoder layers after it run but nothing downstream reads them: their MLP neurons cannot matter
    and are no candidates. ``hidden_states[h]`` is the output of layer ``h − 1`` (``hidden_states[0]`` is the
    embedding), so layers ``>= h`` (``h`` made non-negative) are unused. A list of feature layers (LLaVA-NeXT
    variants) uses up to its largest; Phi-4-multimodal's ``vision_config.feature_layer`` counts the same way. Models
    without either report nothing.
    """
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    feature = getattr(config, "vision_feature_layer", None)
    if feature is None:  # Phi-4-multimodal keeps it in the vision config: vision_config.feature_layer
        feature = getattr(vision, "feature_layer", None)
    n_layers = getattr(vision, "num_hidden_layers", None)
    if feature is None or n_layers is None:
        return {}
    features = list(feature) if isinstance(feature, (list, tuple)) else [feature]
    last = max(int(h) + n_layers + 1 if int(h) < 0 else int(h) for h in features)
    return {layer: f"vision_feature_layer={feature!r} reads hidden_states up to index {last}: layer {layer}'s "
                   "output never reaches the language model" for layer in range(last, n_layers)}


def unused_sites(model: nn.Module, towers: Iterable[str] = TOWERS, strict: bool = True) -> dict[str, str]:
    """Sites :func:`find_sites` (``strict`` passed on) leaves out because the model never uses their output (see
    :func:`unused_layers`): site name → reason."""
    layers = unused_layers(model)
    if not layers or "vision" not in tuple(towers):
        return {}
    return {s.name: layers[s.layer] for s in find_sites(model, ("vision",), strict) if s.layer in layers}


def candidate_sites(model: nn.Module, towers: Iterable[str] = TOWERS, strict: bool = True) -> list[NeuronSite]:
    """:func:`find_sites` without :func:`unused_sites`: the sites MANU scores, and whose neurons alpha counts."""
    unused = unused_sites(model, towers, strict)
    return [s for s in find_sites(model, towers, strict) if s.name not in unused]


def find_sites(model: nn.Module, towers: Iterable[str] = TOWERS, strict: bool = True) -> list[NeuronSite]:
    """Every MLP neuron site of ``model`` in the given towers, ordered by (tower, layer).

    This lists every MLP, used or not; :func:`unused_sites` names those whose output never reaches the language
    model (MANU drops them from its candidates: :func:`candidate_sites`).

    An MLP is a module whose children match a layout of :data:`MLP_LAYOUTS` — ``gate_proj``/``up_proj``/
    ``down_proj``, a fused ``gate_up_proj``/``down_proj``, ``fc1``/``fc2``, ``linear_fc1``/``linear_fc2`` or one
    added by :func:`register_mlp_layout` — with ``nn.Linear`` projections whose widths agree. Its tower is
    ``"vision"`` when a component of its path mentions vision/visual/image/img, else ``"language"``; its layer is
    the last integer in its path (the index in the decoder/encoder layer list). MLPs of the bridge between the
    towers (projector, connector, merger, perceiver resampler, adapter), of an audio encoder, and outside a layer
    list are excluded; so are routed MoE experts (a :class:`SiteWarning` says so). :func:`site_table` lists every
    MLP-like module with the reason.

    Raises ``ValueError`` when nothing is found (listing what was examined), when two MLPs would share a name, and
    — nothing is dropped in silence — when a requested tower has no site or a layer of a tower's layer list has
    none (the message lists the modules seen there and the ``register_mlp_layout`` call that would fix it). With
    ``strict=False`` those last two are a :class:`SiteWarning` and the sites found are returned.
    """
    towers = _check_towers(towers)
    rows = _survey(model, towers)
    sites: dict[str, NeuronSite] = {}
    for row in rows:
        if row.site is None:
            continue
        site = row.site
        if site.name in sites:
            raise ValueError(f"two MLPs map to the site name {site.name!r}: {sites[site.name].path!r} and "
                             f"{site.path!r}; pass sites=[NeuronSite(...)] by hand with distinct layers")
        sites[site.name] = site
    if not sites:
        raise ValueError(nothing_found(model, towers, rows, MLP_LAYOUTS))
    problems = [tower_missing(model, tower, towers, rows) for tower in towers
                if not any(s.tower == tower for s in sites.values())]
    problems += missing_layers(model, list(sites.values()), rows)
    if problems:
        message = "\n".join(problems)
        if strict:
            raise ValueError(message)
        warnings.warn(f"{message}\n(strict=False: going on with the {len(sites)} sites found)", SiteWarning,
                      stacklevel=2)
    experts = [r for r in rows if r.kind == "experts" and r.tower in towers]
    if experts:
        shown = "\n  ".join(r.line() for r in experts[:3]) + ("\n  …" if len(experts) > 3 else "")
        warnings.warn(f"find_sites: {len(experts)} routed-expert module(s) of {type(model).__name__} are NOT scored "
                      f"or pruned by MANU (only dense MLPs and shared experts are):\n  {shown}\ncheck "
                      "manu_lite.hooks.site_table(model) for every MLP and what was made of it", SiteWarning,
                      stacklevel=2)
    return sorted(sites.values(), key=lambda s: (TOWERS.index(s.tower), s.layer, s.name))


