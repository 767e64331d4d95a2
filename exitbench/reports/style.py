"""One place for the look of every figure: fonts, sizes, the colour-blind-safe palette, saving."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")  # reports are drawn headless; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

#: Okabe–Ito: distinguishable under the common colour-vision deficiencies (seaborn's 'colorblind' is close)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
#: a fixed colour per strategy, so a strategy looks the same in every figure and report
STRATEGY_COLORS = {"dynamic": OKABE_ITO[0], "static": "#555555", "oracle": OKABE_ITO[2],
                   "uniform": OKABE_ITO[1], "router": OKABE_ITO[3], "budget": OKABE_ITO[4],
                   "learned router": OKABE_ITO[5]}
STRATEGY_ORDER = ("dynamic", "budget", "learned router", "router", "static", "oracle", "uniform")
RUN_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))

SCREEN_RC = {"figure.dpi": 100, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
             "legend.fontsize": 7.5, "xtick.labelsize": 8, "ytick.labelsize": 8}
#: paper figures: 8 pt text to match a LaTeX caption, text kept as text in SVG and as Type 42 fonts in PDF
PAPER_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
            "ytick.labelsize": 7, "lines.linewidth": 1.2, "lines.markersize": 4, "axes.linewidth": 0.6,
            "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "pdf.fonttype": 42,
            "ps.fonttype": 42, "svg.fonttype": "none", "savefig.bbox": "tight", "savefig.pad_inches": 0.02}
#: widths (inches) of a single and a double column in a two-column paper
COLUMN_WIDTH, PAGE_WIDTH = 3.4, 7.0


def strategy_color(strategy: str, index: int = 0) -> str:
    """The fixed colour of a strategy; unknown (plug-in) strategies cycle through the rest of the palette."""
    return STRATEGY_COLORS.get(strategy, OKABE_ITO[(4 + index) % len(OKABE_ITO)])


def level_colors(n: int) -> list:
    """n colours for levels, cheapest to dearest, from a colour-blind-safe sequential map."""
    return sns.color_palette("viridis", n) if n > len(OKABE_ITO) else list(OKABE_ITO[:n])


@contextlib.contextmanager
def figure_style(paper: bool = False) -> Iterator[None]:
    """Apply the report (or paper) style for the figures drawn inside the block."""
    rc = {**SCREEN_RC, **(PAPER_RC if paper else {})}
    with sns.axes_style("whitegrid", {"grid.linestyle": ":", "axes.edgecolor": "0.3"}), \
            sns.color_palette(list(OKABE_ITO)), plt.rc_context(rc):
        yield


def save_figure(fig: "plt.Figure", stem: str | os.PathLike, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write the figure as ``stem.<fmt>`` for each format and close it; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, format=fmt, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
