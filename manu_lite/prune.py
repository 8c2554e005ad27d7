"""Reversible neuron pruning: a :class:`NeuronMask` applies, restores bit-exactly, saves and loads.

Three modes (``manu_lite.config.PRUNE_MODES``):

``"neuron"``       remove neurons: zero each neuron's *column* of ``down_proj``/``fc2`` (its output) and its *rows*
                   (and bias entries) of ``gate_proj``/``up_proj``/``fc1`` (its input; of a fused ``gate_up_proj``
                   the rows of both halves, ``i`` and ``i + width``), so the neuron's activation is exactly 0
                   (act(0)·0 = 0 for SiLU-gated MLPs, act(0) = 0 for GELU MLPs) and it writes nothing.
``"output_rows"``  what the authors' released code does: zero *rows* (and bias entries) of ``down_proj``/``fc2``.
                   The indices are then **output channels** of the MLP, i.e. residual-stream dimensions
                   (``< hidden size``), not neurons: every token loses those channels of that layer's MLP output.
``"activation"``   a forward pre-hook on ``down_proj``/``fc2`` zeroes the neurons' activations; weights are untouched,
                   so it works on quantized (e.g. 4-bit) models whose weights cannot be edited.

A mask may also carry ``channels``: residual channels of a site's ``down_proj``/``fc2`` output to zero *as well*
(its rows and bias entries; a forward hook on its output in ``"activation"`` mode). Only the released code's
emulation (:mod:`manu_lite.released`) makes them, since that code prunes ``down_proj``/``fc2`` rows.

::

    mask = NeuronMask({"language.0.down_proj": torch.tensor([3, 17])})
    with mask.applied(model):          # or: with mask.apply(model): ...
        model(**inputs)                # neurons 3 and 17 of language layer 0 are gone
    mask.save("out/mask")              # out/mask/mask.safetensors + out/mask/mask.json
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import PRUNE_MODES
from .hooks import NeuronSite, find_sites, site_layer, site_tower
from .artifacts import atomic_path
from .importance import selection_summary

FORMAT = "manu-lite-mask"
VERSION = 1
CHANNELS = "channels:"  # key prefix of the output channels in mask.safetensors


def _site_indices(indices: Mapping[str, Tensor | Sequence[int]], what: str) -> dict[str, Tensor]:
    """Validated copies: site name → sorted unique int64 CPU indices."""
    out: dict[str, Tensor] = {}
    for name, idx in indices.items():
        try:
            site_tower(name), site_layer(name)
        except (IndexError, ValueError):
            raise ValueError(f"mask key {name!r} is not a site name like 'language.3.down_proj'") from None
        idx = torch.as_tensor(idx)
        if idx.dim() != 1 or (idx.numel() and (idx.is_floating_point() or idx.is_complex() or idx.min() < 0)):
            raise ValueError(f"{what} of {name} must be a 1-D tensor of non-negative integers, got "
                             f"{idx.dtype} of shape {tuple(idx.shape)}")
        out[name] = torch.unique(idx.long().cpu())  # unique() also sorts
    return out


def _row_targets(out: nn.Module, idx: Tensor) -> list[tuple[nn.Module, Tensor, int, Tensor]]:
    """The rows (and bias entries) ``idx`` of an output projection: residual channels of the MLP's output."""
    return [(out, t, 0, idx) for t in (out.weight, getattr(out, "bias", None)) if t is not None]


def _on_device(copies: dict, device: torch.device) -> Tensor:
    # Indices follow the activations' device (weights may be on "meta" when offloaded): one copy each.
    idx = copies.get(device)
    if idx is None:
        idx = copies[device] = copies[torch.device("cpu")].to(device)
    return idx


def _zeroing_pre_hook(idx: Tensor):
    """A forward pre-hook that zeroes the neurons ``idx`` of an output projection's input."""
    copies = {torch.device("cpu"): idx}

    def zero_neurons(module, args):
        x = args[0]
        # Out of place: the caller's tensor may be saved for backward or reused.
        return (x.index_fill(-1, _on_device(copies, x.device), 0), *args[1:])
    return zero_neurons


def _zeroing_hook(idx: Tensor):
    """A forward hook that zeroes the channels ``idx`` of an output projection's output."""
    copies = {torch.device("cpu"): idx}

    def zero_channels(module, args, output):
        return output.index_fill(-1, _on_device(copies, output.device), 0)
    return zero_channels


def weight_problem(module: nn.Module) -> str | None:
    """Why the weights of a projection cannot be zeroed in place, or ``None`` when they can.

    Quantized: a bitsandbytes ``Params4bit``/``Int8Params`` weight (it carries ``quant_state`` or ``SCB``), any
    non-floating-point or packed weight (shape not ``[out_features, in_features]``), or no ``weight`` at all
    (GPTQ/AWQ kernels keep ``qweight``). Offloaded: a weight on the ``meta`` device, which accelerate
    (``device_map`` with CPU/disk offload) swaps in at every forward, so zeroing it would silently do nothing.
    """
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        return f"{type(module).__name__} has no weight matrix (a quantized kernel?)"
    kind = type(w).__name__
    shape = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if (hasattr(w, "quant_state") or hasattr(w, "SCB") or kind in ("Params4bit", "Int8Params")
            or not w.is_floating_point() or tuple(w.shape) != shape):
        return (f"{type(module).__name__} weight is quantized or packed ({kind}, dtype {w.dtype}, shape "
                f"{tuple(w.shape)}), not a plain floating-point matrix")
    if w.device.type == "meta":
        return (f"{type(module).__name__} weight is offloaded (on the meta device; accelerate loads it at each "
                "forward), so zeroing it in place would not stick")
    return None


def uneditable_sites(sites: Sequence[NeuronSite]) -> dict[str, str]:
    """Site name → :func:`weight_problem` for every site whose weights ``"neuron"``/``"output_rows"`` masks
    cannot edit (4-bit/8-bit or offloaded models); empty when weight modes work."""
    problems = {}
    for site in sites:
        for module in (site.out_module, *site.in_modules):
            problem = weight_problem(module)
            if problem is not None:
                problems[site.name] = problem
                break
    return problems


class NeuronMask:
    """Which neurons to prune, per site, and how.

    indices: site name (``"language.3.down_proj"``) → 1-D integer indices (stored sorted, unique, int64, CPU).
    mode:    ``"neuron"``, ``"output_rows"`` or ``"activation"`` (see the module docstring).
    meta:    free metadata saved with the mask; :meth:`from_sites` fills ``widths`` (site → neuron count, used by
             :meth:`check_fits`), and callers add ``model_id``, ``config`` (a dict) and ``alpha``.
    channels: site name → residual channels (``< hidden size``) of its output projection to zero as well
             (module docstring); empty by default.

    A mask is applied to at most one model at a time; :meth:`restore` puts back exactly what :meth:`apply`
    changed (only the touched rows/columns are copied), also usable as ``with mask.applied(model):``.
    """

    def __init__(self, indices: Mapping[str, Tensor | Sequence[int]], mode: str = "neuron",
                 meta: Mapping | None = None, channels: Mapping[str, Tensor | Sequence[int]] | None = None):
        if mode == "auto":  # one resolver, so that a mask and MANU's report never disagree on what "auto" means
            raise ValueError("mode='auto' (ManuConfig's default) is resolved from the model's weights: pass "
                             "manu_lite.manu.choose_prune_mode(model, 'auto') as the mode")
        if mode not in PRUNE_MODES:
            raise ValueError(f"unknown prune mode {mode!r}; choose one of {PRUNE_MODES}")
        if channels and mode == "output_rows":
            raise ValueError("mode='output_rows' indices already are output channels; pass them as indices, "
                             "not channels")
        self.indices = _site_indices(indices, "indices")
        self.channels = _site_indices(channels or {}, "channels")
        self.mode = mode
        self.meta = dict(meta or {})
        self._applied: tuple[nn.Module, list] | None = None

    @classmethod
    def from_sites(cls, indices: Mapping[str, Tensor], sites: Sequence[NeuronSite], mode: str = "neuron",
                   channels: Mapping[str, Tensor] | None = None, **meta) -> "NeuronMask":
        """A mask whose metadata records the width of every site in ``sites`` (so that it can check fits)."""
        return cls(indices, mode, {"widths": {s.name: s.width for s in sites}, **meta}, channels)

    # ---- bookkeeping ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Neurons (output channels in ``"output_rows"`` mode); :attr:`channels` are counted apart."""
        return sum(len(i) for i in self.indices.values())

    @property
    def is_applied(self) -> bool:
        return self._applied is not None

    def summary(self) -> dict:
        """Counts per tower and per site (with the candidates when the widths are known)."""
        # A width of 0 means unknown (a mask made without from_sites).
        return selection_summary(self.indices, {**{n: 0 for n in self.indices}, **self.meta.get("widths", {})})

    def __repr__(self) -> str:
        summary = self.summary()
        towers = ", ".join(f"{t} {c['selected']}" + (f"/{c['of']}" if c["of"] else "")
                           for t, c in summary["per_tower"].items())
        state = ", applied" if self.is_applied else ""
        channels = f", + {sum(len(i) for i in self.channels.values())} output channels" if self.channels else ""
        return f"NeuronMask(mode={self.mode!r}, {len(self)} {self._unit()}: {towers or 'none'}{channels}{state})"

    def _unit(self) -> str:
        return "output channels" if self.mode == "output_rows" else "neurons"

    # ---- fitting a model ------------------------------------------------------------------------------------
    def check_fits(self, model: nn.Module) -> dict[str, NeuronSite]:
        """The model's site for every mask key; ``ValueError`` naming the site when the mask does not fit."""
        towers = sorted({site_tower(n) for n in (*self.indices, *self.channels)})
        sites = {s.name: s for s in find_sites(model, towers)} if towers else {}
        widths = self.meta.get("widths", {})
        for name in self.channels:
            idx = self.channels[name]
            if name not in sites:
                raise ValueError(f"mask channel site {name!r} is not in this model ({type(model).__name__})")
            bound = sites[name].out_module.out_features
            if len(idx) and int(idx[-1]) >= bound:
                raise ValueError(f"mask channel {int(idx[-1])} at site {name!r} is out of range: its output has "
                                 f"{bound} channels (the hidden size)")
        for name, idx in self.indices.items():
            site = sites.get(name)
            if site is None:
                raise ValueError(f"mask site {name!r} is not in this model ({type(model).__name__}); its sites are "
                                 f"{', '.join(sites) or 'none'}. Was the mask made for another model?")
            if name in widths and int(widths[name]) != site.width:
                raise ValueError(f"mask site {name!r} was made for {widths[name]} neurons but the model's has "
                                 f"{site.width}: the mask belongs to a model of another size; compute the mask on "
                                 "this model (collect_stats, then select_neurons on its sites)")
            bound = site.out_module.out_features if self.mode == "output_rows" else site.width
            if len(idx) and int(idx[-1]) >= bound:
                raise ValueError(f"mask index {int(idx[-1])} at site {name!r} is out of range: it has {bound} "
                                 f"{self._unit()}" + (" (output_rows indices are residual channels, < hidden size)"
                                                      if self.mode == "output_rows" else ""))
        return {name: sites[name] for name in (*self.indices, *self.channels)}

    # ---- apply / restore ------------------------------------------------------------------------------------
    def _targets(self, site: NeuronSite, idx: Tensor) -> list[tuple[nn.Module, Tensor, int, Tensor]]:
        """(module, tensor, dim, indices) of every slice that gets zeroed for neurons ``idx`` of ``site``.

        The input projections' rows are :meth:`NeuronSite.in_rows`: ``idx`` itself, and for a fused
        ``gate_up_proj`` (``site.fused == 2``) also ``idx + width``, the rows of the up half."""
        out = site.out_module
        if self.mode == "output_rows":
            return _row_targets(out, idx)
        targets = [(out, out.weight, 1, idx)]
        rows = site.in_rows(idx)
        for module in site.in_modules:
            targets += [(module, t, 0, rows) for t in (module.weight, getattr(module, "bias", None)) if t is not None]
        return targets

    def apply(self, model: nn.Module) -> "NeuronMask":
        """Prune ``model`` in place; returns self, so ``with mask.apply(model):`` restores on exit."""
        if self._applied is not None:
            raise RuntimeError("this mask is already applied; call restore() first (a mask serves one model at a time)")
        sites = self.check_fits(model)
        if self.mode == "activation":
            handles = [sites[name].out_module.register_forward_pre_hook(_zeroing_pre_hook(idx))
                       for name, idx in self.indices.items()]
            handles += [sites[name].out_module.register_forward_hook(_zeroing_hook(idx))
                        for name, idx in self.channels.items()]
            self._applied = (model, handles)
            return self
        problems = uneditable_sites(sites.values())  # check everything before touching anything
        if problems:
            name, problem = next(iter(problems.items()))
            raise ValueError(f"mode={self.mode!r} edits weights, but at site {name} (and {len(problems) - 1} more) "
                             f"the {problem}; use mode='activation', which masks activations and leaves weights "
                             "untouched (NeuronMask(indices, mode='activation'))")
        targets = [t for name, idx in self.indices.items() for t in self._targets(sites[name], idx)]
        targets += [t for name, idx in self.channels.items() for t in _row_targets(sites[name].out_module, idx)]
        saved = []
        with torch.no_grad():
            for _, tensor, dim, idx in targets:
                idx = idx.to(tensor.device)
                saved.append((tensor, dim, idx, tensor.index_select(dim, idx)))  # a copy of what gets zeroed
                tensor.index_fill_(dim, idx, 0)
        self._applied = (model, saved)
        return self

    @staticmethod
    def _restore(saved) -> None:
        with torch.no_grad():
            for tensor, dim, idx, values in reversed(saved):
                tensor.index_copy_(dim, idx, values)

    def restore(self) -> None:
        """Undo :meth:`apply`: put back exactly the zeroed entries, or remove the activation hooks."""
        if self._applied is None:
            raise RuntimeError("this mask is not applied to any model; nothing to restore")
        _, state = self._applied
        if self.mode == "activation":
            for handle in state:
                handle.remove()
        else:
            self._restore(state)
        self._applied = None

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator["NeuronMask"]:
        """``with mask.applied(model):`` — pruned inside the block, restored on exit (also on exceptions)."""
        self.apply(model)
        try:
            yield self
        finally:
            self.restore()

    def __enter__(self) -> "NeuronMask":
        if self._applied is None:
            raise RuntimeError("use `with mask.apply(model):` or `with mask.applied(model):`")
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    # ---- save / load ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/mask.safetensors`` (indices) and ``path/mask.json`` (mode, metadata, counts), each
        atomically. Returns the directory."""
        from safetensors.torch import save_file

        path = Path(path)
        info = {"format": FORMAT, "version": VERSION, "mode": self.mode, **self.meta, "counts": self.summary()}
        tensors = {**{n: i.contiguous() for n, i in self.indices.items()},
                   **{CHANNELS + n: i.contiguous() for n, i in self.channels.items()}}
        with atomic_path(path / "mask.safetensors") as tmp:
            save_file(tensors, tmp, metadata={"format": FORMAT})
        with atomic_path(path / "mask.json") as tmp:
            Path(tmp).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronMask":
        """Read a mask written by :meth:`save` (``path`` is its directory)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "mask.json").is_file() or not (path / "mask.safetensors").is_file():
            raise FileNotFoundError(f"{path} does not hold a saved mask (mask.json + mask.safetensors); "
                                    "write one with NeuronMask.save(path)")
        info = json.loads((path / "mask.json").read_text())
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise ValueError(f"{path / 'mask.json'} is not a {FORMAT} v{VERSION} file "
                             f"(format {info.get('format')!r}, version {info.get('version')!r})")
        mode = info.pop("mode")
        for key in ("format", "version", "counts"):
            info.pop(key)
        tensors = load_file(str(path / "mask.safetensors"))
        channels = {n[len(CHANNELS):]: i for n, i in tensors.items() if n.startswith(CHANNELS)}
        return cls({n: i for n, i in tensors.items() if not n.startswith(CHANNELS)}, mode, info, channels)
