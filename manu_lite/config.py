"""Profiles (where a notebook runs) and the MANU configuration (how neurons are scored and pruned).

A notebook's ``parameters`` cell sets ``PROFILE = None``; :func:`resolve_profile` then falls back to the
environment variable ``MANU_PROFILE`` and finally to the hardware. Only the model, the data source, the batch
size and the dtype change between profiles: the code path is the same.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

RENDERINGS = ("image_text", "text_only")
TOWERS = ("language", "vision")
FORMULATIONS = ("paper", "reference", "balanced")
PAPER_REDUCTIONS = ("sum", "mean")
PAPER_VISION = ("as_written", "exclude")
POSITIONS = ("recall", "all")
SCOPES = ("global", "tower", "layer")
PRUNE_MODES = ("neuron", "output_rows", "activation")  # how a NeuronMask prunes
MANU_PRUNE_MODES = ("auto", *PRUNE_MODES)  # ManuConfig also takes "auto": chosen from the model's weights
SETS = ("forget", "test", "retain", "celebrity")
TASKS = ("mc", "generation", "cloze")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class ManuConfig:
    """Every open choice of MANU, with the defaults this book argues for.

    formulation: which method, each name meaning exactly one computation (:mod:`manu_lite.importance`):
                 ``"paper"`` — the paper's equations as written: S_n = I(D_f, n) / (I(D_r, n) + ε) with
                 I = I_abs + I_freq + I_var + I_rms contrasting the image+text and text-only renderings, one
                 top-alpha threshold over ``scope`` (default global);
                 ``"reference"`` — the released code's selection: per dataset mean|a|, freq(|a| > tau), unbiased
                 std, rms; score Σ w_k (F_k / (R_k + ε) − 1) (weights 2, 0, 2, 2), vision neurons on image+text,
                 language neurons on text-only, one threshold per tower, k = int(alpha/100 · n), mask =
                 score >= k-th largest (ties all kept);
                 ``"balanced"`` — this book's modality-balanced variant (neither of the above): per rendering the
                 ratio Σ w_k M_k(forget) / (Σ w_k M_k(retain) + ε) of plain magnitudes, the two rankings
                 interleaved so each rendering contributes about alpha/2 %.
    paper_reduction: how the paper's N and Z² reduce over tokens (``formulation="paper"`` only): ``"sum"``
                 (default, as written: N a count, Z² a sum) or ``"mean"`` (per-token: divide by each
                 rendering's token count, so the renderings' different lengths do not enter the contrast).
    paper_vision: the paper's equations on vision neurons (``formulation="paper"`` only). Text-only inputs never
                 reach the vision tower, so its text-only statistics are empty and the equations give
                 I_abs = I_freq = I_rms = 1 and I_var = σ_multi: S_n = (3 + σ_f) / (3 + σ_r + ε), a variance
                 ratio close to 1 for every vision neuron. ``"as_written"`` (default) keeps that;
                 ``"exclude"`` drops vision neurons from the candidates (and from alpha's N).
    emulate_released_defects: ``formulation="reference"`` only: also reproduce the released code's
                 selection-changing defects — statistics pooled over all layers of a tower under shared names
                 (per sub-site width), only the last three layers of each tower pruned, with identical indices.
                 Pair with ``prune_mode="output_rows"`` to zero output rows as the code does
                 (:func:`manu_lite.importance.released_code_mask`).
    positions:   which token positions feed the language-model statistics: ``"recall"`` (positions that predict
                 answer tokens) or ``"all"`` (every non-padding position). Vision statistics use all patches.
    tau:         activation threshold of the frequency statistic (the released code uses 0.1).
    epsilon:     stabiliser in every ratio.
    alpha:       percentage of candidate neurons to prune, in (0, 100].
    scope:       where the top-alpha threshold is taken: ``"global"``, per ``"tower"`` or per ``"layer"``;
                 ``None`` (default) = the formulation's own (paper, balanced: global; reference: tower).
    towers:      which towers are scored and pruned.
    prune_mode:  ``"auto"`` (default: ``"activation"`` when the weights are quantized or offloaded, else
                 ``"neuron"``; :func:`manu_lite.manu.choose_prune_mode`),
                 ``"neuron"`` (remove neurons: zero down_proj/fc2 columns and gate/up/fc1 rows),
                 ``"output_rows"`` (the released code: zero output rows, i.e. residual channels), or
                 ``"activation"`` (a hook that masks neuron activations; weights untouched, works on 4-bit).
    weights:     per-statistic weights (abs, freq, var, rms); ``None`` means the formulation's default
                 (paper, balanced: 1, 1, 1, 1; reference: 2, 0, 2, 2).
    """

    formulation: str = "paper"
    positions: str = "recall"
    tau: float = 0.1
    epsilon: float = 1e-5
    alpha: float = 10.0
    scope: str | None = None
    towers: tuple[str, ...] = TOWERS
    prune_mode: str = "auto"
    weights: dict[str, float] | None = None
    seed: int = 0
    max_batches: int | None = None
    paper_reduction: str = "sum"
    paper_vision: str = "as_written"
    emulate_released_defects: bool = False

    def __post_init__(self):
        _check_choice("formulation", self.formulation, FORMULATIONS)
        _check_choice("positions", self.positions, POSITIONS)
        if self.scope is not None:
            _check_choice("scope", self.scope, SCOPES)
        _check_choice("prune_mode", self.prune_mode, MANU_PRUNE_MODES)
        _check_choice("paper_reduction", self.paper_reduction, PAPER_REDUCTIONS)
        _check_choice("paper_vision", self.paper_vision, PAPER_VISION)
        if self.emulate_released_defects and self.formulation != "reference":
            raise ValueError("emulate_released_defects=True emulates the released code, i.e. formulation='reference'; "
                             f"got formulation={self.formulation!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and 0 < self.alpha <= 100):
            raise ValueError(f"alpha={self.alpha!r} is out of range: it is a percentage of neurons, 0 < alpha <= 100; "
                             "pass e.g. alpha=10 (prunes 10 %)")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"tau={self.tau!r} must be a finite number >= 0; use e.g. tau=0.1 (the released code's)")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon={self.epsilon!r} must be a finite number > 0; use e.g. epsilon=1e-5")
        if not self.towers:
            raise ValueError("towers is empty; choose at least one of 'language', 'vision'")
        for tower in self.towers:
            _check_choice("tower", tower, TOWERS)
        if self.weights is not None:
            unknown = set(self.weights) - {"abs", "freq", "var", "rms"}
            if unknown:
                raise ValueError(f"unknown weight(s) {sorted(unknown)}; weights take keys abs, freq, var, rms")

    @property
    def selection_scope(self) -> str:
        """``scope``, or the formulation's own when it is ``None`` (reference: one threshold per tower)."""
        if self.scope is not None:
            return self.scope
        return "tower" if self.formulation == "reference" else "global"

    @property
    def statistic_weights(self) -> dict[str, float]:
        if self.weights is not None:
            return {k: float(self.weights.get(k, 0.0)) for k in ("abs", "freq", "var", "rms")}
        if self.formulation == "reference":
            return {"abs": 2.0, "freq": 0.0, "var": 2.0, "rms": 2.0}
        return {"abs": 1.0, "freq": 1.0, "var": 1.0, "rms": 1.0}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ManuConfig":
        data = dict(data)
        # Configurations saved before the three named methods: selection="union" was the balanced variant.
        legacy_selection = data.pop("selection", None)
        legacy_extra = data.pop("extra", None) or {}
        if legacy_selection == "union":
            data["formulation"] = "balanced"
        if "reduction" in legacy_extra and data.get("formulation") == "paper":
            data["paper_reduction"] = legacy_extra["reduction"]
        if "towers" in data:
            data["towers"] = tuple(data["towers"])
        return cls(**data)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    mc_protocol:  ``"mllmu"`` (the benchmark's own protocol for every task, see book/benchmark_protocol.md),
                  or for multiple choice only ``"likelihood"`` (option text, summed log-prob; length-biased),
                  ``"likelihood_norm"`` (per-character normalised, acc_norm) or ``"likelihood_letter"``
                  (options shown, the letter's log-prob).
    on_overflow:  under ``"mllmu"``, when few-shot examples overflow the context: ``"drop"`` them (counted in
                  ``Results.meta["dropped_shots"]``) or ``"raise"``.
    gate_mc, gate_rouge: the memorization gate: a vanilla run whose forget MC accuracy or ROUGE-L falls below
                  these is flagged (``Results.meta["memorization"]``).
    few_shot:     MC profiles whose questions serve as in-context examples for ``"mllmu"`` (the benchmark uses
                  1): drawn, seeded, from the set being scored, as eval.py does, and their questions not scored.
                  Cloze always draws 2 profiles, as eval.py does for LLaVA.
    instructions: append the benchmark's task instructions to generation and cloze prompts. Real checkpoints
                  fine-tuned by the benchmark expect them; the tiny model was trained on bare questions.
    """

    mc_protocol: str = "likelihood"
    few_shot: int = 1
    on_overflow: str = "drop"
    gate_mc: float = 0.8
    gate_rouge: float = 0.5
    instructions: bool = True
    max_new_tokens: int = 48
    batch_size: int = 32
    seed: int = 0
    sets: tuple[str, ...] = SETS
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self):
        protocols = ("mllmu", "likelihood", "likelihood_norm", "likelihood_letter")
        if self.mc_protocol not in protocols:
            raise ValueError(f"unknown mc_protocol {self.mc_protocol!r}; use one of {protocols}")
        if self.on_overflow not in ("drop", "raise"):
            raise ValueError(f"unknown on_overflow {self.on_overflow!r}; use 'drop' or 'raise'")
        for name, values, allowed in (("set", self.sets, SETS), ("task", self.tasks, TASKS)):
            unknown = set(values) - set(allowed)
            if unknown:
                raise ValueError(f"unknown {name}(s) {sorted(unknown)}; choose from {allowed}")


@dataclass(frozen=True)
class Profile:
    """Where a run happens: which model, which data, how big a batch, which dtype, and the evaluation and MANU
    settings the CLI and the notebooks use there."""

    name: str
    model: str
    data: str
    batch_size: int
    dtype: str
    load_in_4bit: bool = False
    forget_split: str = "forget_10"
    evaluation: EvalConfig = EvalConfig()
    manu: ManuConfig = ManuConfig()
    note: str = ""


# The embedded default world: small enough to train on two CPU cores in a few minutes.
TINY_PROFILES = 50
TINY_CELEBRITIES = 10
# The tiny model was trained on bare questions, so prompts carry no task instructions; answers are short.
TINY_EVAL = EvalConfig(instructions=False, max_new_tokens=24, batch_size=64)
# MANU as the demo runs it: the book's modality-balanced method ("balanced", neither the paper's equations nor the
# released code), recall positions, language MLPs only, alpha 30. benchmarks/method_table.py (three forget splits,
# language tower): balanced is the only one of the three that forgets in both renderings (forget cloze +20.7
# image+text / +11.2 text-only, ROUGE-L +5.4 / +1.7; retain cloze +6.0 / +2.5, ROUGE-L +3.8 / +0.5); reference
# forgets on image+text only; paper does not forget selectively. All three cost celebrity image+text cloze 22-28
# points at alpha 30 (book/paper_vs_code.md, "The three methods measured").
TINY_MANU = ManuConfig(formulation="balanced", alpha=30.0, towers=("language",))

PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny", model="tiny", data="synthetic", batch_size=32, dtype="float32",
        evaluation=TINY_EVAL, manu=TINY_MANU, note="CPU, offline, minutes: a tiny LLaVA trained here on a synthetic MLLMU-Bench",
    ),
    "colab": Profile(
        name="colab", model="MLLMMU/LLaVA_Vanilla", data="MLLMMU/MLLMU-Bench", batch_size=4, dtype="float16",
        load_in_4bit=True, evaluation=EvalConfig(batch_size=4),
        # 4-bit weights cannot be zeroed in place: prune_mode="auto" (the default) masks activations instead.
        manu=ManuConfig(), note="one T4/L4-class GPU: the benchmark's fine-tuned LLaVA-1.5-7B in 4-bit",
    ),
    "full": Profile(
        name="full", model="MLLMMU/LLaVA_Vanilla", data="MLLMMU/MLLMU-Bench", batch_size=16, dtype="bfloat16",
        evaluation=EvalConfig(batch_size=16), note="A100/H100-class GPU: LLaVA-1.5-7B (or MLLMMU/Idefics2_Vanilla) as in the paper",
    ),
}


def resolve_profile(profile: str | Profile | None = None) -> Profile:
    """The profile named by the argument, else by ``$MANU_PROFILE``, else by the hardware.

    With no GPU the answer is ``tiny``; a GPU under 40 GB gives ``colab``, a larger one ``full``.
    """
    if isinstance(profile, Profile):
        return profile
    name = profile or os.environ.get("MANU_PROFILE")
    if not name:
        import torch

        if not torch.cuda.is_available():
            name = "tiny"
        else:
            gib = torch.cuda.get_device_properties(0).total_memory / 2**30
            name = "colab" if gib < 40 else "full"
    _check_choice("profile", name, tuple(PROFILES))
    return PROFILES[name]
