"""The ``crops`` asset's check (embeddings_finite) and the quality cut its histogram shows."""

from __future__ import annotations

import numpy as np
import polars as pl

from vcn_assets.core.config import CropConfig
from vcn_assets.core.crops import UNKNOWN, Crops, quality_cut, summarise_tracks
from vcn_assets.core.quality import mad_cut, mad_outliers
from vcn_assets.core.tracking import TrackBoxes
from vcn_assets.orchestration.checks import embeddings_finite
from vcn_assets.store import tables


def _crops(embedding: np.ndarray, views: np.ndarray) -> Crops:
    n = len(embedding)
    ones = np.ones(n, np.float32)
    return Crops(np.arange(n), np.arange(n), np.zeros((n, 4), np.float32), embedding.astype(np.float32), ones,
                 ones, ones, views.astype(np.float32), [b"\xff\xd8"] * n)


def _table(embedding: np.ndarray, views: np.ndarray) -> pl.DataFrame:
    return tables.crops_frame("ep1", _crops(embedding, views))


def test_embeddings_finite_passes_on_normal_and_empty_tables() -> None:
    rng = np.random.default_rng(0)
    ok = embeddings_finite(_table(rng.normal(size=(5, 8)), rng.normal(size=(5, 3, 8))))
    assert ok.passed and ok.check_name == "embeddings_finite"
    assert ok.metadata["dim"].value == 8 and ok.metadata["n_crops"].value == 5
    empty = embeddings_finite(_table(np.zeros((0, 8)), np.zeros((0, 3, 8))))
    assert empty.passed and empty.metadata["n_crops"].value == 0


def test_embeddings_finite_fails_on_a_nan_embedding() -> None:
    emb, views = np.ones((4, 8)), np.ones((4, 2, 8))
    emb[2, 5] = np.nan
    result = embeddings_finite(_table(emb, views))
    assert not result.passed
    assert result.metadata["n_nonfinite_embeddings"].value == 1
    assert result.metadata["n_nonfinite_views"].value == 0
    assert "1 crop(s) with non-finite embeddings" in result.metadata["problems"].text


def test_embeddings_finite_fails_on_infinite_views_and_inconsistent_dimensions() -> None:
    emb, views = np.ones((3, 8)), np.ones((3, 2, 8))
    views[0, 1, 0] = np.inf
    assert embeddings_finite(_table(emb, views)).metadata["n_nonfinite_views"].value == 1
    df = _table(np.ones((3, 8)), np.ones((3, 2, 8)))
    ragged = df.with_columns(pl.Series("embedding", [[1.0] * 8, [1.0] * 4, [1.0] * 8], dtype=pl.List(pl.Float32)))
    result = embeddings_finite(ragged)
    assert not result.passed and "embedding dimensions [4, 8]" in result.metadata["problems"].text
    wrong_views = df.with_columns(pl.lit(3, dtype=pl.Int32).alias("n_views"))
    assert "views are not n_views x 8" in embeddings_finite(wrong_views).metadata["problems"].text


def test_mad_cut_is_the_threshold_mad_outliers_applies() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = np.r_[rng.normal(0.8, rng.uniform(0.001, 0.05), 12), rng.uniform(0.2, 0.8, 2)].astype(np.float32)
        cut = mad_cut(q, 3.0, 5, 0.01)
        np.testing.assert_array_equal(mad_outliers(q, 3.0, 5, 0.01), q.astype(np.float64) < cut)
    assert mad_cut(np.ones(4), 3.0, 5) is None


def test_quality_cut_matches_summarise_tracks() -> None:
    n_tracks = 7
    boxes = TrackBoxes(np.arange(n_tracks), np.zeros(n_tracks, np.int64), np.zeros((n_tracks, 4), np.float32),
                       np.zeros((n_tracks, 5, 2), np.float32), np.ones(n_tracks, np.float32), np.ones(n_tracks, bool))
    q = np.array([0.8, 0.81, 0.79, 0.8, 0.82, 0.2], np.float32)  # track 6 has no crop
    crops = Crops(np.arange(6), np.zeros(6, np.int64), np.zeros((6, 4), np.float32), np.zeros((6, 2), np.float32),
                  q, np.ones(6, np.float32), np.ones(6, np.float32), np.zeros((6, 2, 2), np.float32), [b""] * 6)
    cfg = CropConfig()
    summary = summarise_tracks(boxes, crops, cfg)
    cut = quality_cut(summary.quality[summary.n_crops > 0], cfg)
    assert cut is not None and 0.2 < cut < 0.79
    has = summary.n_crops > 0
    assert ((summary.quality < cut) & has).tolist() == (summary.status == UNKNOWN).tolist()
    assert quality_cut(summary.quality[:2], cfg) is None  # too few tracks to judge
