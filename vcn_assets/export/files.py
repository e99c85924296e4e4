"""Writing one movie's export: clusters.csv, clusters.json, thumbs/ and index.html.

Usage::

    write_csv(report, Path("out/ep1/clusters.csv"))     # report = read_report(store, "ep1")
    write_json(report, Path("out/ep1/clusters.json"))
    write_thumbs(report, Path("out/ep1"))              # the files under out/ep1/thumbs/

Thumbnails are the stored crop JPEGs, copied as they are: ``thumbs/cluster_<id>.jpg`` (the
representative crop), ``thumbs/cluster_<id>_<k>.jpg`` (k = 1, 2, ...: further crops, best first) and
``thumbs/track_<id>.jpg`` (an unknown track's best crop). The JSON and the page refer to them by these relative paths.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vcn_assets.export.report import Appearance, Cluster, MovieReport, UnknownTrack, timecode

FORMATS = ("csv", "json", "html")
THUMBS = "thumbs"
_THUMB_NAME = re.compile(r"(cluster|track)_\d+(_\d+)?\.jpg")
CSV_COLUMNS = ("cluster_id", "name", "n_tracks", "screen_time_s", "cluster_first_tc", "cluster_last_tc",
               "track_id", "start_frame", "end_frame", "start_tc", "end_tc", "duration_s")


def cluster_thumbs(cluster: Cluster) -> list[str]:
    """Relative paths of a cluster's thumbnails, representative first."""
    cid = cluster.cluster_id
    return [f"{THUMBS}/cluster_{cid}.jpg" if k == 0 else f"{THUMBS}/cluster_{cid}_{k}.jpg"
            for k in range(len(cluster.crop_ids))]


def track_thumb(track: UnknownTrack) -> str | None:
    return None if track.crop_id is None else f"{THUMBS}/track_{track.appearance.track_id}.jpg"


def _thumb_crops(report: MovieReport) -> dict[str, int]:
    """Relative thumbnail path -> crop id, for every thumbnail of the report."""
    out = {path: crop for c in report.clusters for path, crop in zip(cluster_thumbs(c), c.crop_ids)}
    return out | {track_thumb(u): u.crop_id for u in report.unknown if u.crop_id is not None}


def write_thumbs(report: MovieReport, folder: Path) -> list[Path]:
    """Write the thumbnails under ``folder/thumbs`` and delete thumbnails left by an earlier export."""
    (folder / THUMBS).mkdir(parents=True, exist_ok=True)
    written = []
    for rel, crop in _thumb_crops(report).items():
        (folder / rel).write_bytes(report.jpegs[crop])
        written.append(folder / rel)
    keep = set(written)
    for old in (folder / THUMBS).glob("*.jpg"):
        if old not in keep and _THUMB_NAME.fullmatch(old.name):
            old.unlink()
    return written


def _seconds(x: float) -> float:
    return round(x, 3)


def _number(x: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return None if x is None or not math.isfinite(x) else x


def _appearance(a: Appearance) -> dict[str, Any]:
    return {"track_id": a.track_id, "start_frame": a.start_frame, "end_frame": a.end_frame,
            "start_s": _seconds(a.start_s), "end_s": _seconds(a.end_s), "start_tc": a.start_tc,
            "end_tc": a.end_tc, "duration_s": _seconds(a.duration_s)}


def csv_text(value: str) -> str:
    """A user-given text as a CSV cell a spreadsheet shows as text: a leading ``= + - @`` (or tab /
    carriage return) would start a formula, so such a value gets a leading apostrophe (OWASP's
    advice against CSV injection); the JSON export keeps the name exactly."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_rows(report: MovieReport) -> Iterable[dict[str, Any]]:
    """One row per appearance of a clustered track, the cluster's columns repeated."""
    for c in report.clusters:
        cluster = {"cluster_id": c.cluster_id, "name": csv_text(c.name or ""), "n_tracks": c.n_tracks,
                   "screen_time_s": _seconds(c.screen_time_s), "cluster_first_tc": c.first_tc,
                   "cluster_last_tc": c.last_tc}
        for a in c.appearances:
            app = _appearance(a)
            yield cluster | {k: app[k] for k in CSV_COLUMNS if k in app}


def write_csv(report: MovieReport, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(report))


def _cluster_json(c: Cluster) -> dict[str, Any]:
    return {
        "cluster_id": c.cluster_id, "name": c.name, "n_tracks": c.n_tracks, "n_crops": c.n_crops,
        "screen_time_s": _seconds(c.screen_time_s), "first_tc": c.first_tc, "last_tc": c.last_tc,
        "thumbnails": cluster_thumbs(c), "appearances": [_appearance(a) for a in c.appearances],
        "merge_suggestions": [{"other_cluster_id": s.other_cluster_id, "rank": s.rank, "score": _number(s.score),
                               "threshold": _number(s.threshold), "margin": _number(s.margin)}
                              for s in c.suggestions],
    }


def to_json(report: MovieReport) -> dict[str, Any]:
    m = report.movie
    return {
        "movie": {"key": m.key, "name": m.name, "path": m.path, "fps": m.fps, "n_frames": m.n_frames,
                  "duration_s": _seconds(m.duration_s), "duration_tc": timecode(m.duration_s)},
        "times": "start = start_frame / fps; end = (end_frame + 1) / fps, the end of the last frame",
        "clusters": [_cluster_json(c) for c in report.clusters],
        "unknown_tracks": [{"status": u.status, "name": u.name, **_appearance(u.appearance),
                            "thumbnail": track_thumb(u)} for u in report.unknown],
    }


def write_json(report: MovieReport, path: Path) -> None:
    path.write_text(json.dumps(to_json(report), indent=1, ensure_ascii=False, allow_nan=False) + "\n",
                    encoding="utf-8")

