"""Turn what a reviewer sees (track ids, cluster ids of the latest clustering) into anchored track
references for the corrections file (core/corrections.py).

Usage::

    ref = track_ref(store, "ep1", 12)          # track 12, anchored at its middle box
    ref = cluster_ref(store, "ep1", 3)         # the track holding cluster 3's representative crop
"""

from __future__ import annotations

import polars as pl

from vcn_assets.core.corrections import CorrectionsError, TrackRef
from vcn_assets.store import tables
from vcn_assets.store.db import Store


def track_ref(store: Store, movie_key: str, track_id: int) -> TrackRef:
    boxes = tables.boxes_from(store.read("track_boxes", movie_key))
    if len(boxes.track_id) == 0:
        raise CorrectionsError(f"movie {movie_key!r}: no tracks stored: materialise `tracks` first")
    return TrackRef.of_track(track_id, boxes.track_id, boxes.frame_idx, boxes.xyxy)


def cluster_ref(store: Store, movie_key: str, cluster_id: int) -> TrackRef:
    """A cluster is named or linked through its most representative track (names attach to tracks,
    so they survive re-runs that renumber clusters)."""
    summary = store.read("cluster_summary", movie_key).filter(pl.col("cluster_id") == cluster_id)
    if summary.height == 0:
        raise CorrectionsError(f"movie {movie_key!r}: no cluster {cluster_id} in the latest clustering")
    crop = store.read("crops", movie_key).filter(pl.col("crop_id") == summary["rep_crop_id"][0])
    if crop.height == 0:
        raise CorrectionsError(f"movie {movie_key!r}: cluster {cluster_id}'s representative crop is missing")
    return track_ref(store, movie_key, int(crop["track_id"][0]))
