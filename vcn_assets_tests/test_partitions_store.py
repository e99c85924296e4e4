"""Partition keys, path confinement and the DuckDB store's atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import polars as pl
import pytest

from vcn_assets.orchestration.partitions import discover, movie_key, resolve_movie
from vcn_assets.store.db import Store
from vcn_assets.store.tables import data_version

HOSTILE = [
    "The Big Bang, 'Pilot'.mp4", 'quote"d.mp4', "ünïcødé filmé.mp4", "..mp4", "...mp4", "a..b.mp4",
    "x; DROP TABLE shots; --.mp4", "名前.mp4", "line\nbreak.mp4", "UPPER.MP4", "ep1.mkv", "a" * 200 + ".mp4",
]


def test_plain_names_keep_their_stem() -> None:
    assert movie_key("ep1.mp4") == "ep1"
    assert movie_key("bbt_s01e01-open.mp4") == "bbt_s01e01-open"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_become_safe_slugs(name: str) -> None:
    key = movie_key(name)
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", key), key
    assert ".." not in key and "/" not in key and len(key) <= 60


def test_keys_are_unique() -> None:
    keys = [movie_key(n) for n in HOSTILE + ["ep1.mp4", "ep1.mov", "EP1.mp4", "ep 1.mp4"]]
    assert len(set(keys)) == len(keys)


def test_discover_and_resolve_stay_inside_movies_dir(tmp_path: Path) -> None:
    movies = tmp_path / "movies"
    movies.mkdir()
    for name in ["ep1.mp4", "Ep, 2.mov", "notes.txt", ".hidden.mp4"]:
        (movies / name).write_bytes(b"x")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (movies / "link.mp4").symlink_to(outside)
    found = discover(movies)
    assert set(found) == {"ep1", movie_key("Ep, 2.mov"), "link"}
    assert resolve_movie(movies, "ep1") == movies / "ep1.mp4"
    with pytest.raises(PermissionError, match="outside"):
        resolve_movie(movies, "link")
    with pytest.raises(FileNotFoundError, match="no matching file"):
        resolve_movie(movies, "../secret")


def _shots(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {"movie_key": ["m"] * n, "shot_idx": list(range(n)), "start_frame": list(range(n)), "end_frame": list(range(n))},
        schema_overrides={"shot_idx": pl.Int32, "start_frame": pl.Int32, "end_frame": pl.Int32},
    )


def test_replace_is_idempotent_and_per_movie(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.duckdb")
    store.replace("m", {"shots": _shots(3)})
    store.replace("m", {"shots": _shots(3)})
    store.replace("other", {"shots": _shots(2).with_columns(pl.lit("other").alias("movie_key"))})
    assert store.count("shots", "m") == 3
    assert store.count("shots", "other") == 2


def test_failed_replace_leaves_previous_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.duckdb")
    store.replace("m", {"shots": _shots(3)})
    bad = pl.DataFrame({"movie_key": ["m"], "shot_idx": ["not an int"]})
    with pytest.raises(duckdb.Error):
        store.replace("m", {"shots": _shots(5), "tracks": bad})
    assert store.count("shots", "m") == 3  # the whole transaction rolled back


def test_hostile_movie_key_is_parameterised(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.duckdb")
    key = "x'; DROP TABLE shots; --"
    store.replace(key, {"shots": _shots(1).with_columns(pl.lit(key).alias("movie_key"))})
    assert store.count("shots", key) == 1


def test_unknown_table_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        Store(tmp_path / "db.duckdb").read("shots; DROP TABLE x", "m")


def test_data_version_is_content_hash() -> None:
    a = data_version({"shots": _shots(3)})
    assert a == data_version({"shots": _shots(3).with_columns(pl.lit("renamed").alias("movie_key"))})
    assert a != data_version({"shots": _shots(4)})
