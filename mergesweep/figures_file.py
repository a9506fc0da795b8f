"""Write a study's figures to a file, without a server: ``.html`` (plotly) or ``.png``
(matplotlib).

HTML embeds plotly.js (~4.6 MB) so the report opens offline. PNG is drawn with matplotlib from
the same figure dicts (scatter, bar and heatmap traces, as :mod:`mergesweep.figures` makes
them): plotly's own PNG export (kaleido 1.x) drives a Chrome it finds or downloads, which a
machine without a browser or a network does not have.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from mergesweep.errors import ConfigError, MergesweepError

__all__ = ["write_figures"]

FORMATS = (".html", ".png")


def write_figures(figures: dict[str, dict[str, Any]], path: str | Path, *, title: str) -> Path:
    """Write ``figures`` (from :func:`mergesweep.figures.study_figures`) to ``path``.

    Raises:
        ConfigError: the suffix is neither ``.html`` nor ``.png``, or there is no figure.
        MergesweepError: plotly (html) or matplotlib (png) is not installed.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"--plot: '{out}' must end in .html or .png")
    if not figures:
        raise ConfigError(f"--plot: study '{title}' has no complete trial to plot")
    if not out.parent.is_dir():
        raise ConfigError(f"--plot: folder '{out.parent}' does not exist")
    (_html if suffix == ".html" else _png)(figures, out, title)
    return out


def _html(figures: dict[str, dict[str, Any]], out: Path, title: str) -> None:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MergesweepError(
            "--plot: html needs plotly: pip install 'mergesweep[dashboard]'"
        ) from None
    parts = []
    for i, (key, fig) in enumerate(figures.items()):
        body = go.Figure(fig).to_html(
            full_html=False, include_plotlyjs=(i == 0), div_id=f"mergesweep-{key}"
        )
        parts.append(f'<div class="fig">{body}</div>')
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1em}.fig{width:48%;display:inline-block;"
        "vertical-align:top}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )
    out.write_text(page, encoding="utf-8")


def _png(figures: dict[str, dict[str, Any]], out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise MergesweepError(
            "--plot: png needs matplotlib: pip install 'mergesweep[dashboard]'"
        ) from None
    cols = 2 if len(figures) > 1 else 1
    rows = math.ceil(len(figures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.6 * rows), squeeze=False)
    for ax, spec in zip(axes.flat, figures.values()):
        _draw(ax, spec)
    for ax in list(axes.flat)[len(figures) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _text(layout: dict[str, Any], *keys: str) -> str:
    node: Any = layout
    for k in keys:
        node = node.get(k, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, str) else ""


def _draw(ax: Any, spec: dict[str, Any]) -> None:
    """One plotly figure dict on one matplotlib axes (the trace kinds mergesweep makes)."""
    layout = spec.get("layout", {})
    bars = [t for t in spec["data"] if t["type"] == "bar"]
    for trace in spec["data"]:
        kind = trace["type"]
        if kind == "scatter":
            mode = trace.get("mode", "lines")
            marker = trace.get("marker", {})
            style = dict(label=trace.get("name"), color=marker.get("color"))
            if "lines" in mode:
                step = trace.get("line", {}).get("shape") == "hv"
                ax.plot(
                    trace["x"],
                    trace["y"],
                    marker="o" if "markers" in mode else None,
                    markersize=3,
                    drawstyle="steps-post" if step else "default",
                    **style,
                )
            else:
                ax.scatter(
                    trace["x"],
                    trace["y"],
                    s=14,
                    marker="x" if marker.get("symbol") == "x" else "o",
                    **style,
                )
        elif kind == "bar":
            k, width = bars.index(trace), 0.8 / len(bars)
            pos = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(trace["x"]))]
            ax.bar(
                pos,
                [math.nan if v is None else v for v in trace["y"]],
                width,
                label=trace.get("name"),
            )
            ax.set_xticks(range(len(trace["x"])), trace["x"], rotation=90 if len(pos) > 12 else 0)
        elif kind == "heatmap":
            z = trace["z"]
            im = ax.imshow(z, aspect="auto", cmap="viridis")
            ax.set_xticks(range(len(trace["x"])), trace["x"], rotation=45, ha="right")
            ax.set_yticks(range(len(trace["y"])), trace["y"])
            if len(z) * len(z[0]) <= 200:
                lo, hi = im.get_clim()
                for i, row in enumerate(z):
                    for j, v in enumerate(row):
                        dark = hi > lo and (v - lo) / (hi - lo) < 0.6  # viridis: dark below
                        ax.text(
                            j,
                            i,
                            f"{v:.2f}",
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="w" if dark else "k",
                        )
            ax.figure.colorbar(im, ax=ax)
    ax.set_title(_text(layout, "title", "text"), fontsize=10)
    ax.set_xlabel(_text(layout, "xaxis", "title", "text"))
    ax.set_ylabel(_text(layout, "yaxis", "title", "text"))
    if any(t["type"] != "heatmap" for t in spec["data"]):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
