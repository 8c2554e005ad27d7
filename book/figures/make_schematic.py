"""Draw the MANU schematic used on the book's front page.

    python book/figures/make_schematic.py            # writes book/_static_figs/manu_schematic.png

The PNG is committed so that the book builds without running this script; re-run it after editing and commit both.
Only matplotlib is needed (no manu_lite import, no model): this is a hand-drawn diagram, not a result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "_static_figs" / "manu_schematic.png"

# Colour roles, used consistently across the book's figures.
FORGET = "#c0392b"      # forget set / pruned neurons
RETAIN = "#2471a3"      # retain set
MULTI = "#7d3c98"       # image+text rendering
TEXT = "#b9770e"        # text-only rendering
GREY = "#566573"
PALE = "#f4f6f7"


def box(ax, x, y, w, h, text="", fc=PALE, ec=GREY, fontsize=10, weight="normal", color="black", lw=1.2,
        ha="center", va="center", round_=0.02):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad=0.004,rounding_size={round_}",
                                fc=fc, ec=ec, lw=lw))
    if text:
        tx = x + w / 2 if ha == "center" else x + 0.01
        ax.text(tx, y + h / 2, text, ha=ha, va=va, fontsize=fontsize, weight=weight, color=color, wrap=True)


def arrow(ax, x0, y0, x1, y1, color=GREY, lw=1.6, style="-|>", ls="-"):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=14, color=color, lw=lw,
                                 linestyle=ls, shrinkA=0, shrinkB=0))


def portrait(ax, x, y, s, seed):
    """A small procedurally drawn 'portrait' (the tiny profile's synthetic images look like this in spirit)."""
    rng = np.random.default_rng(seed)
    bg = rng.uniform(0.55, 0.9, 3)
    ax.add_patch(Rectangle((x, y), s, s, fc=bg, ec=GREY, lw=1))
    skin = rng.uniform(0.45, 0.95, 3) * np.array([1.0, 0.8, 0.65])
    ax.add_patch(matplotlib.patches.Ellipse((x + s / 2, y + 0.58 * s), 0.42 * s, 0.5 * s, fc=skin, ec="none"))
    ax.add_patch(Rectangle((x + 0.2 * s, y), 0.6 * s, 0.3 * s, fc=rng.uniform(0.1, 0.6, 3), ec="none"))
    hair = rng.uniform(0.05, 0.4, 3)
    ax.add_patch(matplotlib.patches.Wedge((x + s / 2, y + 0.66 * s), 0.23 * s, 0, 180, fc=hair, ec="none"))


def neuron_grid(ax, x, y, w, h, rows, cols, pruned, seed, title, title_color, layer_labels=True):
    """A tower's MLP neurons as a grid of dots; `pruned` of them are crossed out in the forget colour."""
    rng = np.random.default_rng(seed)
    ax.text(x + w / 2, y + h + 0.018, title, ha="center", va="bottom", fontsize=10, weight="bold", color=title_color)
    box(ax, x, y, w, h, fc="white", ec=GREY)
    xs = np.linspace(x + 0.03 * w / 0.3, x + w - 0.03 * w / 0.3, cols)
    ys = np.linspace(y + h - 0.035, y + 0.035, rows)
    n = rows * cols
    chosen = set(rng.choice(n, size=pruned, replace=False).tolist())
    for i in range(rows):
        for j in range(cols):
            k = i * cols + j
            if k in chosen:
                ax.plot(xs[j], ys[i], marker="o", ms=7, mfc="white", mec=FORGET, mew=1.4)
                ax.plot(xs[j], ys[i], marker="x", ms=7, color=FORGET, mew=1.6)
            else:
                ax.plot(xs[j], ys[i], marker="o", ms=6.5, mfc="#aab7b8", mec=GREY, mew=0.6)
        if layer_labels:
            ax.text(x - 0.008, ys[i], f"L{rows - i}", ha="right", va="center", fontsize=7, color=GREY)


def draw(out: Path, dpi: int = 150) -> Path:
    plt.rcParams.update({"font.family": "DejaVu Sans"})
    fig = plt.figure(figsize=(8.6, 8.6 * 0.56 / 1.3))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1.3)
    ax.set_ylim(0, 0.56)
    ax.axis("off")

    # Column titles.
    for xc, t in [(0.145, "1  Two renderings"), (0.52, "2  Record neurons in both towers"),
                  (1.05, "3  Score and prune")]:
        ax.text(xc, 0.535, t, ha="center", va="center", fontsize=11, weight="bold")

    # --- Column 1: forget / retain examples in two renderings ---------------------------------------------------
    box(ax, 0.01, 0.275, 0.25, 0.235, fc="#fdedec", ec=FORGET, lw=1.5)
    ax.text(0.02, 0.49, "forget set  $D_f$", color=FORGET, fontsize=10.5, weight="bold", va="center")
    portrait(ax, 0.02, 0.385, 0.075, seed=3)
    ax.text(0.105, 0.445, "Where was this\nperson born?", fontsize=8.8, va="center", color=MULTI)
    ax.text(0.105, 0.405, "image + text", fontsize=8, style="italic", color=MULTI, va="center")
    ax.text(0.02, 0.335, "Where was Amelia\nKuznetsov born?", fontsize=8.8, va="center", color=TEXT)
    ax.text(0.02, 0.292, "text only (named)", fontsize=8, style="italic", color=TEXT, va="center")
    ax.text(0.252, 0.378, "→ Riga", fontsize=9, va="center", ha="right", weight="bold")

    box(ax, 0.01, 0.02, 0.25, 0.235, fc="#eaf2f8", ec=RETAIN, lw=1.5)
    ax.text(0.02, 0.235, "retain set  $D_r$", color=RETAIN, fontsize=10.5, weight="bold", va="center")
    portrait(ax, 0.02, 0.13, 0.075, seed=11)
    ax.text(0.105, 0.19, "What is this\nperson's job?", fontsize=8.8, va="center", color=MULTI)
    ax.text(0.105, 0.15, "image + text", fontsize=8, style="italic", color=MULTI, va="center")
    ax.text(0.02, 0.08, "What is Noah\nLindqvist's job?", fontsize=8.8, va="center", color=TEXT)
    ax.text(0.02, 0.037, "text only", fontsize=8, style="italic", color=TEXT, va="center")
    ax.text(0.252, 0.122, "→ pilot", fontsize=9, va="center", ha="right", weight="bold")

    # --- Column 2: the model with its two towers ---------------------------------------------------------------
    neuron_grid(ax, 0.33, 0.215, 0.12, 0.235, rows=5, cols=4, pruned=2, seed=5,
                title="vision encoder", title_color=MULTI, layer_labels=False)
    box(ax, 0.47, 0.285, 0.05, 0.095, "proj.", fontsize=9)
    neuron_grid(ax, 0.55, 0.215, 0.22, 0.235, rows=5, cols=8, pruned=5, seed=8,
                title="language model", title_color=GREY)
    arrow(ax, 0.45, 0.353, 0.47, 0.353)
    arrow(ax, 0.52, 0.353, 0.55, 0.353)
    # Both sets, both renderings, go through the same model: image patches into the vision tower,
    # text tokens into the language model.
    ax.plot([0.262, 0.29], [0.39, 0.39], color=GREY, lw=1.6)
    ax.plot([0.262, 0.29], [0.14, 0.14], color=GREY, lw=1.6)
    ax.plot([0.29, 0.29], [0.14, 0.39], color=GREY, lw=1.6)
    arrow(ax, 0.29, 0.353, 0.33, 0.353, color=MULTI)
    ax.text(0.309, 0.36, "image", color=MULTI, fontsize=7.5, ha="center", va="bottom")
    ax.plot([0.29, 0.66], [0.175, 0.175], color=TEXT, lw=1.6)
    arrow(ax, 0.66, 0.175, 0.66, 0.215, color=TEXT)
    ax.text(0.46, 0.18, "text tokens (both renderings)", color=TEXT, fontsize=8.5, ha="center", va="bottom")
    box(ax, 0.33, 0.02, 0.44, 0.125,
        "per neuron, per (dataset, rendering):\n"
        "count,  \u03a3|a|,  \u03a3a,  \u03a3a\u00b2,  #{|a| > \u03c4}\n"
        "neuron = input unit of down_proj / fc2",
        fc="white", ec=GREY, fontsize=9.0)
    arrow(ax, 0.735, 0.215, 0.735, 0.147, ls="--")

    # --- Column 3: score and prune -------------------------------------------------------------------------------
    box(ax, 0.83, 0.30, 0.44, 0.2, fc="white", ec=GREY)
    ax.text(1.05, 0.47, "importance of neuron $n$ on a dataset $D$", ha="center", fontsize=9.5)
    ax.text(1.05, 0.425, r"$I(D,n)=I_{abs}+I_{freq}+I_{var}+I_{rms}$", ha="center", fontsize=12)
    ax.text(1.05, 0.375, "each term contrasts image+text vs text-only", ha="center", fontsize=8.8,
            color=GREY)
    ax.text(1.05, 0.33, r"$S_n = \dfrac{I(D_f,n)}{I(D_r,n)+\epsilon}$   prune top $\alpha\%$", ha="center",
            fontsize=12.5, color=FORGET)
    arrow(ax, 0.78, 0.38, 0.83, 0.40)

    # Bar chart of scores with a threshold.
    rng = np.random.default_rng(1)
    scores = np.sort(rng.gamma(2.0, 1.0, 24))[::-1]
    bx0, by0, bw, bh = 0.86, 0.1, 0.40, 0.15
    smax = scores.max()
    for i, s in enumerate(scores):
        col = FORGET if i < 4 else "#aab7b8"
        ax.add_patch(Rectangle((bx0 + i * bw / 24, by0), bw / 24 * 0.8, bh * s / smax, fc=col, ec="none"))
    thr = by0 + bh * (scores[3] + scores[4]) / 2 / smax
    ax.plot([bx0 - 0.005, bx0 + bw], [thr, thr], ls="--", color=FORGET, lw=1.2)
    ax.text(bx0 + bw, thr + 0.008, r"top $\alpha\%$", color=FORGET, fontsize=9, ha="right", va="bottom")
    ax.text(bx0 + bw / 2, by0 - 0.02, "neurons sorted by $S_n$", ha="center", fontsize=8.5, color=GREY)
    arrow(ax, 1.05, 0.30, 1.05, 0.255)
    ax.text(0.83, 0.03, "zero the pruned neurons (a reversible mask):\n"
            "forget answers go, retain answers stay", fontsize=8.5, va="center", color="black")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No timestamp/software metadata, so re-running on the same matplotlib gives the same bytes.
    fig.savefig(out, dpi=dpi, metadata={"Software": None}, facecolor="white")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--dpi", type=int, default=150)
    a = p.parse_args(argv)
    print(draw(a.out, a.dpi))


if __name__ == "__main__":
    main()
