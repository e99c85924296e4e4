"""The static review page of one movie: who is in it, and when.

Usage::

    Path("out/ep1/index.html").write_text(render_page(report), encoding="utf-8")

Self-contained and offline: plain CSS in a <style> block, no scripts, no external resources; the only
links are to ``thumbs/...`` beside the page and to anchors within it. Every stored string (movie
path, key, names from the user's corrections file, statuses) is HTML-escaped.
"""

from __future__ import annotations

import math
from html import escape

from vcn_assets.export.files import cluster_thumbs, track_thumb
from vcn_assets.export.report import Appearance, Cluster, MovieReport, Suggestion, timecode

LONG_LIST = 12  # appearance lists longer than this start folded

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{margin:.2em 0}small,.muted{color:#666}
section{border-top:1px solid #ddd;padding:1em 0}
.sheet img{width:72px;height:72px;margin:0 4px 4px 0;border-radius:4px;vertical-align:top}
.sheet img.rep{width:112px;height:112px;outline:3px solid #2a6}
.timeline{position:relative;height:16px;background:#eee;border-radius:3px;margin:.5em 0}
.timeline span{position:absolute;top:0;height:16px;min-width:2px;background:#2a6}
.timeline span:hover{background:#053}
.axis{display:flex;justify-content:space-between;font-size:12px;color:#666}
table.cast{width:100%;border-collapse:collapse}table.cast td{padding:2px 8px 2px 0;vertical-align:middle}table.cast td.bar{width:60%}
table.cast img{width:40px;height:40px;border-radius:3px}
.suggest img{width:40px;height:40px;vertical-align:middle;margin-right:6px;border-radius:3px}
.suggest li{list-style:none;margin:4px 0}.suggest{padding:0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;width:120px;font-size:12px}
.grid img{width:112px;height:112px;border-radius:4px}.noimg{width:112px;height:112px;background:#eee}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _span(seconds: float) -> str:
    """``42.0 s`` or ``3 min 07.5 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _range(a: Appearance) -> str:
    return f"{a.start_tc} – {a.end_tc}"


def _timeline(appearances: tuple[Appearance, ...], length_s: float, label: str) -> str:
    """A bar across the movie with one positioned link per appearance (timecodes in its title)."""
    segs = "".join(
        f'<span style="left:{100 * a.start_s / length_s:.3f}%;width:{100 * a.duration_s / length_s:.3f}%" '
        f'title="{_e(label)}: {_range(a)} (track {a.track_id})"></span>'
        for a in appearances)
    return f'<div class="timeline" role="img" aria-label="appearances of {_e(label)}">{segs}</div>'


def _axis(length_s: float) -> str:
    return f'<div class="axis"><span>{timecode(0)}</span><span>{timecode(length_s)}</span></div>'


def _img(src: str, label: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img src="{_e(src)}" alt="{_e(label)}"{klass} loading="lazy">'


def _suggestion(s: Suggestion, report: MovieReport) -> str:
    other = report.cluster(s.other_cluster_id)
    margin = f"margin {s.margin:.3g}" if s.margin is not None and math.isfinite(s.margin) else "margin unknown"
    if other is None:
        return f"<li>may be the same person as cluster {s.other_cluster_id} (not in this export; {margin})</li>"
    thumb = _img(cluster_thumbs(other)[0], other.label) if other.crop_ids else ""
    named = f"{_e(other.name)} (cluster {other.cluster_id})" if other.name else f"cluster {other.cluster_id}"
    return f'<li><a href="#cluster-{other.cluster_id}">{thumb}may be the same person as {named}</a> ({margin})</li>'


def _appearance_list(c: Cluster) -> str:
    items = "".join(f"<li>{_range(a)} <small>({_span(a.duration_s)}, track {a.track_id})</small></li>"
                    for a in c.appearances)
    folded = "" if c.n_tracks > LONG_LIST else " open"
    return f"<details{folded}><summary>{_count(c.n_tracks, 'appearance')}</summary><ol>{items}</ol></details>"


def _cluster(c: Cluster, report: MovieReport, length_s: float) -> str:
    thumbs = "".join(_img(src, c.label, "rep" if k == 0 else "") for k, src in enumerate(cluster_thumbs(c)))
    share = 100 * c.screen_time_s / length_s
    named = f" <small>cluster {c.cluster_id}</small>" if c.name else ""
    suggestions = "".join(_suggestion(s, report) for s in c.suggestions)
    return (
        f'<section id="cluster-{c.cluster_id}"><h2>{_e(c.label)}{named}</h2>'
        f'<p class="muted">on screen {_span(c.screen_time_s)} ({share:.1f}% of the movie) in '
        f"{_count(c.n_tracks, 'appearance')}, {c.first_tc} – {c.last_tc}</p>"
        f'<div class="sheet">{thumbs}</div>{_timeline(c.appearances, length_s, c.label)}{_axis(length_s)}'
        f"{_appearance_list(c)}"
        + (f'<ul class="suggest">{suggestions}</ul>' if suggestions else "")
        + "</section>"
    )


def _cast(report: MovieReport, length_s: float) -> str:
    """The overview: one row per cluster (thumbnail, name, screen time, timeline)."""
    rows = "".join(
        f"<tr><td>{_img(cluster_thumbs(c)[0], c.label) if c.crop_ids else ''}</td>"
        f'<td><a href="#cluster-{c.cluster_id}">{_e(c.label)}</a></td><td>{_span(c.screen_time_s)}</td>'
        f'<td class="bar">{_timeline(c.appearances, length_s, c.label)}</td></tr>'
        for c in report.clusters)
    if not rows:
        return "<p>No face clusters in this movie.</p>"
    return f'<table class="cast">{rows}<tr><td colspan="3"></td><td>{_axis(length_s)}</td></tr></table>'


def _unknown(report: MovieReport) -> str:
    if not report.unknown:
        return ""
    cards = []
    for u in report.unknown:
        src = track_thumb(u)
        label = f"track {u.appearance.track_id}" + (f" “{u.name}”" if u.name else "")
        img = _img(src, label) if src else '<div class="noimg"></div>'
        cards.append(f"<figure>{img}<figcaption>{_e(label)} · {_e(u.status)}<br>{_range(u.appearance)}"
                     "</figcaption></figure>")
    return ('<section id="unknown"><h2>Unknown tracks</h2><p class="muted">Tracks in no cluster: '
            "<b>unknown</b> = low face quality, <b>not_face</b> = marked not a face, "
            f'<b>no_crops</b> = no usable crop.</p><div class="grid">{"".join(cards)}</div></section>')


def render_page(report: MovieReport) -> str:
    """The whole page as one string."""
    m = report.movie
    # the bar spans the movie; a track stored past the recorded duration still fits
    ends = [a.end_s for c in report.clusters for a in c.appearances] + [u.appearance.end_s for u in report.unknown]
    length_s = max([m.duration_s, *ends, 1e-3])
    n_tracks = sum(c.n_tracks for c in report.clusters)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(m.name)}: who is in it</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(m.name)}</h1><p class=\"muted\">{timecode(m.duration_s)} · {m.fps:g} fps · "
        f"movie key {_e(m.key)} · {_count(len(report.clusters), 'cluster')} of {_count(n_tracks, 'track')} · "
        + (f'<a href="#unknown">{_count(len(report.unknown), "unknown track")}</a>' if report.unknown
           else "no unknown tracks")
        + "</p></header>"
        f"<section><h2>Cast</h2>{_cast(report, length_s)}</section>"
        + "".join(_cluster(c, report, length_s) for c in report.clusters)
        + _unknown(report)
        + "</body></html>\n"
    )
