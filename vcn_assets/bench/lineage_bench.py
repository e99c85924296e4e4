"""``vcn bench-lineage``: how fast ``vcn lineage`` answers on a large store.

Usage::

    vcn bench-lineage --movies 100 --reruns 10 --repeat 7

Fills a fresh DuckDB file with the lineage and cache index of ``movies`` x ``reruns`` materialisations
of every cached asset (each re-run changes the clusters config, as a user tuning it would), then
times ``lineage_report`` for one movie's ``clusters`` (median of ``repeat`` calls, each opening the
store as the CLI does).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from vcn_assets.orchestration.caching import CODE_VERSIONS
from vcn_assets.store.db import Store
from vcn_assets.store.lineage import lineage_report

ASSETS = ("shots", "tracks", "crops", "finetuned_checkpoint", "soft_matches", "clusters")


def _rows(movie: str, rerun: int, t0: datetime) -> list[dict]:
    rows, prev = [], {"movie_file": f"{movie}-hash"}
    for i, asset in enumerate(ASSETS):
        version = f"{movie}-{asset}-{rerun if asset == 'clusters' else 0}"
        rows.append({"run_id": f"run-{movie}-{rerun}", "movie_key": movie, "asset": asset, "fingerprint": version,
                     "inputs": json.dumps(prev), "data_version": version,
                     "config": json.dumps({"max_iterations": 50 - rerun if asset == "clusters" else 0}),
                     "code_version": CODE_VERSIONS[asset], "model": "{}",
                     "started_at": t0 + timedelta(minutes=rerun, seconds=i), "ended_at": t0 + timedelta(minutes=rerun, seconds=i + 1),
                     "row_counts": "{}", "cache": "miss" if rerun == 0 or asset == "clusters" else "hit",
                     "status": "success"})
        prev = {asset: version}
    return rows


def fill(store: Store, movies: int, reruns: int) -> None:
    t0 = datetime(2026, 1, 1)
    rows = [r for m in range(movies) for k in range(reruns) for r in _rows(f"movie{m:04d}", k, t0)]
    lineage = pl.DataFrame(rows)
    index = pl.DataFrame([{"movie_key": f"movie{m:04d}", "asset": a, "fingerprint": "x",
                           "data_version": f"movie{m:04d}-{a}-{reruns - 1 if a == 'clusters' else 0}"}
                          for m in range(movies) for a in ASSETS])
    with store.connect() as con:
        store.ensure_schema(con)
        con.register("l", lineage.to_arrow())
        con.execute("INSERT INTO lineage BY NAME SELECT * FROM l")
        con.register("c", index.to_arrow())
        con.execute("INSERT INTO cache_index BY NAME SELECT * FROM c")


def run_lineage_bench(movies: int, reruns: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "vcn.duckdb")
        fill(store, movies, reruns)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            report = lineage_report(Store(store.path), f"movie{movies // 2:04d}", "clusters")
            times.append(time.perf_counter() - t)
    return {"movies": movies, "reruns": reruns, "lineage_rows": movies * reruns * len(ASSETS),
            "median_s": statistics.median(times), "max_s": max(times), "chain_len": len(report["chain"]),
            "history_len": len(report["history"])}
