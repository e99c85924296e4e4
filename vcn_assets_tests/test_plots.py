"""core/plots.py: valid small PNGs, deterministic projections and bytes, empty input."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from vcn_assets.core.plots import (
    cast_timeline,
    embedding_plot,
    loss_curve,
    markdown_image,
    project_2d,
    quality_histogram,
    timeline,
)

BUDGET = 40_000  # bytes per picture: a materialisation's metadata must stay small


def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 3
    return img


def _clusters(n: int, k: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = rng.normal(size=(k, dim))[labels] * 3 + rng.normal(size=(n, dim))
    labels[:5] = -1
    return x.astype(np.float32), labels


def _typical() -> dict[str, bytes]:
    x, labels = _clusters(150, 12)
    rng = np.random.default_rng(1)
    n_frames = 25 * 60 * 5
    first = rng.integers(0, n_frames - 200, 150)
    return {
        "embedding": embedding_plot(project_2d(x), labels, names={0: "Sheldon"}),
        "loss": loss_curve(np.linspace(5, 1, 900) + rng.random(900), 300),
        "quality": quality_histogram(rng.normal(0.8, 0.03, 150), 0.7),
        "timeline": timeline(25.0, n_frames, np.r_[0, np.sort(rng.choice(n_frames, 80, replace=False))],
                             np.c_[first, first + rng.integers(10, 200, 150)]),
    }


@pytest.fixture(scope="module")
def typical() -> dict[str, bytes]:
    return _typical()


def test_typical_plots_are_valid_small_pngs(typical: dict[str, bytes]) -> None:
    for name, png in typical.items():
        img = _decode(png)
        assert img.shape[:2] == (208, 360), name
        assert len(png) <= BUDGET, (name, len(png))
        assert img.std() > 10, name  # something was drawn


def test_plots_are_deterministic_bytes(typical: dict[str, bytes]) -> None:
    assert _typical() == typical


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 50])
def test_project_2d_shapes_and_determinism(n: int) -> None:
    x, _ = _clusters(max(n, 1), 3)
    xy = project_2d(x[:n])
    assert xy.shape == (n, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, project_2d(x[:n]))


def test_project_2d_uses_pca_beyond_tsne_range() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 8)) * np.r_[10.0, 5.0, np.full(6, 0.1)]
    xy = project_2d(x)
    assert xy.shape == (1500, 2)
    # the two high-variance directions come out as the two axes, in order
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], x[:, 1])[0, 1]) > 0.99
    np.testing.assert_array_equal(xy, project_2d(x))


def test_project_2d_separates_clusters() -> None:
    x, labels = _clusters(120, 3, seed=2)
    keep = labels >= 0
    xy, labels = project_2d(x[keep]), labels[keep]
    centres = np.stack([xy[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_project_2d_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        project_2d(np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        project_2d(np.zeros(4))


def test_empty_inputs_give_no_data_images() -> None:
    empties = [
        embedding_plot(np.zeros((0, 2)), np.zeros(0, np.int64)),
        loss_curve([], 100),
        quality_histogram([], None),
        quality_histogram([np.nan, np.nan], 0.5),  # only tracks without crops
        timeline(25.0, 0, [], []),
        cast_timeline(25.0, 100, []),
    ]
    for png in empties:
        _decode(png)
        assert len(png) < 5_000
    assert len({*empties}) == 1  # the same "no data" picture


def test_edge_cases_draw() -> None:
    _decode(embedding_plot(np.zeros((3, 2)), [-1, -1, -1]))  # only unknown points
    _decode(embedding_plot(project_2d(_clusters(60, 30)[0]), _clusters(60, 30)[1]))  # > 10 clusters
    _decode(quality_histogram([0.8], None))
    _decode(loss_curve([1.0], 0))
    _decode(timeline(25.0, 100, [0], np.zeros((0, 2), np.int64)))  # shots but no tracks
    _decode(timeline(25.0, 10**6, [0, 500_000], [[0, 10**6 - 1]]))  # a long movie is binned


def test_embedding_plot_checks_lengths() -> None:
    with pytest.raises(ValueError, match="labels"):
        embedding_plot(np.zeros((3, 2)), [0, 1])


def test_markdown_image_round_trips() -> None:
    png = quality_histogram([0.8, 0.9], None)
    md = markdown_image(png, "quality [tracks]")
    assert md.startswith("![quality (tracks)](data:image/png;base64,") and md.endswith(")")
    assert base64.b64decode(md[md.index(",") + 1 : -1]) == png


def test_cast_timeline_draws_the_clusters_with_most_screen_time() -> None:
    rows = [(f"cluster {i}", [[i * 10, i * 10 + 5 * i]]) for i in range(20)]
    png = cast_timeline(25.0, 1000, rows)
    assert _decode(png).shape[:2] == (208, 360) and len(png) < 40_000
    assert png == cast_timeline(25.0, 1000, rows)
