"""Small PNG plots for asset metadata: embeddings, finetuning loss, track quality, the movie timeline.

Usage::

    xy = project_2d(embeddings)                              # (N, D) -> (N, 2), deterministic
    png = embedding_plot(xy, labels, names={0: "Sheldon"})   # bytes of a PNG
    markdown_image(png, "embeddings")                        # "![embeddings](data:image/png;base64,...)"

Every plot is a 360x208 px palette PNG (4.5x2.6 in at 80 dpi, 128 colours, no metadata; typically
3-12 kB) so that a materialisation's metadata stays small and the same input gives the same
bytes. Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot global state, no
display needed, safe in worker threads. Empty input gives an image saying "no data".
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from numpy.typing import ArrayLike, NDArray

SIZE_IN = (4.5, 2.6)
DPI = 80
TSNE_MAX_POINTS = 300  # t-SNE of 1000 points took 7-20 s on 2 loaded cores (too slow for a picture); PCA: ms
LEGEND_CLUSTERS = 10
UNKNOWN_COLOUR = "#b0b0b0"
LOSS_SMOOTHING = 50  # the loss curve's running mean spans 1/50 of the steps (the raw loss is noisy)
TIMELINE_BINS = 1200  # at most this many points on the timeline's curve (a bin keeps its maximum)
PNG_COLOURS = 128


def project_2d(x: ArrayLike, seed: int = 0) -> NDArray[np.float64]:
    """(N, D) points -> (N, 2) for display, deterministic for ``seed``.

    t-SNE (perplexity ``min(30, (N - 1) / 3)``, PCA initialisation) for 3 <= N <= TSNE_MAX_POINTS: it keeps
    local neighbourhoods, which is what shows whether a cluster is one tight group. For larger N it
    gets too slow for a metadata picture, so PCA (the two main directions of variance) is used
    instead. N < 3 has no structure to show: the points are laid out on a line. Non-finite input
    raises ValueError.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    n = len(x)
    if n < 3:
        return np.column_stack([np.arange(n, dtype=np.float64) * 2 - (n - 1), np.zeros(n)])
    if x.shape[1] < 2:
        x = np.column_stack([x, np.zeros((n, 2 - x.shape[1]))])
    if n > TSNE_MAX_POINTS:
        return _pca_2d(x)
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float64)


def _pca_2d(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Scores on the two main principal axes, each axis signed so its largest loading is positive."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())[:, None]
    return centred @ axes.T


def embedding_plot(
    xy: ArrayLike, labels: ArrayLike, names: dict[int, str] | None = None, unknown_label: int = -1
) -> bytes:
    """Scatter of 2-d points coloured by cluster (``unknown_label`` in grey), legend for the largest
    clusters; ``names`` maps cluster ids to legend captions (else "cluster <id>")."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    labels = np.asarray(labels, np.int64)
    if len(labels) != len(xy):
        raise ValueError(f"{len(xy)} points but {len(labels)} labels")
    fig, ax = _figure()
    if len(xy) == 0:
        return _no_data(fig, ax)
    unknown = labels == unknown_label
    if unknown.any():
        ax.scatter(xy[unknown, 0], xy[unknown, 1], s=6, c=UNKNOWN_COLOUR, linewidths=0, label="unknown")
    ids, counts = np.unique(labels[~unknown], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]  # largest first, ties by id
    colours = colormaps["tab20"]
    for rank, c in enumerate(order):
        pts = xy[labels == c]
        caption = (names or {}).get(int(c), f"cluster {c}") if rank < LEGEND_CLUSTERS else None
        ax.scatter(pts[:, 0], pts[:, 1], s=8, color=colours(rank % colours.N), linewidths=0, label=caption)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{len(xy)} points, {len(ids)} clusters", fontsize=8)
    handles = [h for h, lab in zip(*ax.get_legend_handles_labels()) if lab]
    if handles:
        ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                  markerscale=1.5, handletextpad=0.2)
    return _png(fig)


def loss_curve(losses: Sequence[float] | NDArray[np.floating], steps_per_round: int) -> bytes:
    """Training loss per step (and its running mean), with the boundaries between finetuning rounds as
    dashed lines."""
    y = np.asarray(losses, np.float64).ravel()
    fig, ax = _figure()
    if len(y) == 0:
        return _no_data(fig, ax)
    steps = np.arange(len(y))
    ax.plot(steps, y, lw=0.5, color="#a6c8e6", label="per step")
    window = max(1, len(y) // LOSS_SMOOTHING)
    if window > 1:
        smooth = np.convolve(y, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.0, color="#1f4e9c", label=f"mean of {window}")
        ax.legend(fontsize=6, frameon=False)
    if steps_per_round > 0:
        for b in range(steps_per_round, len(y), steps_per_round):
            ax.axvline(b, color="#888888", lw=0.8, ls="--")
    ax.set_xlabel("step", fontsize=7)
    ax.set_ylabel("loss", fontsize=7)
    n_rounds = -(-len(y) // steps_per_round) if steps_per_round > 0 else 1
    ax.set_title(f"finetuning loss, {n_rounds} round(s) of {steps_per_round} steps"
                 if steps_per_round > 0 else f"finetuning loss, {len(y)} steps", fontsize=8)
    return _png(fig)


def quality_histogram(quality: ArrayLike, cut: float | None) -> bytes:
    """Histogram of per-track quality (non-finite values, i.e. tracks without crops, are left out)
    with the outlier cut as a red line: tracks left of it are ``unknown``."""
    q = np.asarray(quality, np.float64).ravel()
    q = q[np.isfinite(q)]
    fig, ax = _figure()
    if len(q) == 0:
        return _no_data(fig, ax)
    ax.hist(q, bins=int(np.clip(np.sqrt(len(q)) * 2, 5, 40)), color="#4c72b0")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if cut is not None:
        ax.axvline(cut, color="#d62728", lw=1.2, label=f"outlier cut {cut:.3f}")
        ax.legend(fontsize=6, frameon=False)
    below = int((q < cut).sum()) if cut is not None else 0
    ax.set_xlabel("track quality (mean SER-FIQ)", fontsize=7)
    ax.set_title(f"{len(q)} tracks, {below} below the cut" if cut is not None
                 else f"{len(q)} tracks, too few for an outlier cut", fontsize=8)
    return _png(fig)


def timeline(fps: float, n_frames: int, shot_starts: ArrayLike, track_spans: ArrayLike) -> bytes:
    """Face tracks on screen over time (``track_spans`` (T, 2): first and last frame, inclusive) with
    shot cuts as thin grey lines (``shot_starts``: first frame of each shot); x axis in m:ss."""
    starts = np.asarray(shot_starts, np.int64).ravel()
    spans = np.asarray(track_spans, np.int64).reshape(-1, 2)
    fig, ax = _figure()
    if n_frames <= 0 or fps <= 0:
        return _no_data(fig, ax)
    t, count = _on_screen(n_frames, spans)
    cuts = starts[(starts > 0) & (starts < n_frames)] / fps
    if len(cuts):
        ax.vlines(cuts, 0, 1, transform=ax.get_xaxis_transform(), colors="#c8c8c8", lw=0.5)
    ax.step(t / fps, count, where="post", lw=0.8, color="#1f77b4")
    ax.set_xlim(0, n_frames / fps)
    ax.set_ylim(0, max(int(count.max()), 1) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: f"{int(s // 60)}:{int(s % 60):02d}"))
    ax.set_xlabel("time (m:ss)", fontsize=7)
    ax.set_ylabel("face tracks", fontsize=7)
    ax.set_title(f"{len(spans)} tracks, {len(starts)} shots (grey: cuts)"
                 if len(spans) else f"no face tracks, {len(starts)} shots (grey: cuts)", fontsize=8)
    return _png(fig)


def _on_screen(n_frames: int, spans: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(first frame of each bin, the most tracks on screen in it), at most TIMELINE_BINS bins."""
    delta = np.zeros(n_frames + 1, np.int64)
    np.add.at(delta, np.clip(spans[:, 0], 0, n_frames), 1)
    np.add.at(delta, np.clip(spans[:, 1] + 1, 0, n_frames), -1)
    per_frame = np.cumsum(delta[:n_frames])
    width = -(-n_frames // TIMELINE_BINS)
    edges = np.arange(0, n_frames, width)
    peak = np.maximum.reduceat(per_frame, edges)
    return np.r_[edges, n_frames], np.r_[peak, peak[-1]]


CAST_ROWS = 12  # clusters shown by the cast timeline (most screen time first)


def cast_timeline(fps: float, n_frames: int, rows: Sequence[tuple[str, ArrayLike]]) -> bytes:
    """Who is on screen when: one row per cluster (``rows`` = (label, spans (K, 2) first/last frame
    inclusive)), the ``CAST_ROWS`` with the most screen time, top down; x axis in m:ss."""
    fig, ax = _figure()
    if n_frames <= 0 or fps <= 0 or not rows:
        return _no_data(fig, ax)
    spans = [np.asarray(sp, np.int64).reshape(-1, 2) for _, sp in rows]
    screen = [int((sp[:, 1] - sp[:, 0] + 1).sum()) for sp in spans]
    order = sorted(range(len(rows)), key=lambda i: (-screen[i], i))[:CAST_ROWS]
    colours = colormaps["tab20"]
    for y, i in enumerate(order):
        bars = [(a / fps, max(b - a + 1, 1) / fps) for a, b in spans[i]]
        ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=colours(y % 20))
    ax.set_yticks(range(len(order)), [rows[i][0][:18] for i in order], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, n_frames / fps)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: f"{int(s // 60)}:{int(s % 60):02d}"))
    ax.set_xlabel("time (m:ss)", fontsize=7)
    shown = f"top {len(order)} of {len(rows)}" if len(rows) > len(order) else f"{len(rows)}"
    ax.set_title(f"who is on screen when ({shown} clusters)", fontsize=8)
    return _png(fig)


def markdown_image(png: bytes, alt: str) -> str:
    """``![alt](data:image/png;base64,...)`` for a Markdown metadata value."""
    safe = alt.replace("[", "(").replace("]", ")")
    return f"![{safe}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _figure():
    fig = Figure(figsize=SIZE_IN, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.tick_params(labelsize=6)
    return fig, ax


def _no_data(fig: Figure, ax) -> bytes:
    ax.set_axis_off()
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=12, color="#666666", transform=ax.transAxes)
    return _png(fig)


def _png(fig: Figure) -> bytes:
    """The figure as a palette PNG (128 colours, median cut, no dithering: ~3x smaller than RGBA and
    indistinguishable for flat-coloured plots), without metadata, so equal figures give equal bytes."""
    from PIL import Image

    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    palette = rgb.quantize(colors=PNG_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    palette.save(buf, format="png", optimize=True)
    return buf.getvalue()
