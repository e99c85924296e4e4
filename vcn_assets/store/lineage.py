"""Reading lineage: what produced an asset's current output, and what changed between runs.

Usage::

    report = lineage_report(store, "ep1", "clusters")
    report["chain"]     # current output back to the movie file's hash, one entry per asset
    report["history"]   # newest first, each with "changed": ["config", "input:crops", ...]
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from vcn_assets.store.db import Store


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("run_id", "asset", "fingerprint", "data_version", "code_version", "cache", "status")}
    out |= {"inputs": json.loads(row["inputs"]), "config": json.loads(row["config"]),
            "model": json.loads(row["model"]), "row_counts": json.loads(row["row_counts"]),
            "started_at": str(row["started_at"]), "ended_at": str(row["ended_at"])}
    return out


def changed(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """What differs between two lineage entries: config, code_version, model, input:<asset>."""
    if old is None:
        return ["first"]
    diff = [k for k in ("config", "code_version", "model") if new[k] != old[k]]
    names = sorted(set(new["inputs"]) | set(old["inputs"]))
    return diff + [f"input:{n}" for n in names if new["inputs"].get(n) != old["inputs"].get(n)]


def chain(rows: pl.DataFrame, asset: str, version: str) -> list[dict[str, Any]]:
    """The successful materialisations that produced ``asset`` at ``version``, walking inputs upstream."""
    out, todo, seen = [], [(asset, version)], set()
    while todo:
        name, ver = todo.pop(0)
        if (name, ver) in seen:
            continue
        seen.add((name, ver))
        match = rows.filter((pl.col("asset") == name) & (pl.col("data_version") == ver) & (pl.col("status") == "success"))
        if match.height == 0:
            out.append({"asset": name, "data_version": ver, "source": True})
            continue
        entry = _entry(match.sort("started_at").row(0, named=True))  # the run that first produced it
        out.append(entry)
        todo += list(entry["inputs"].items())
    return out


def lineage_report(store: Store, movie_key: str, asset: str) -> dict[str, Any]:
    rows = store.read("lineage", movie_key)
    current = store.cache_entry(movie_key, asset)
    mine = rows.filter(pl.col("asset") == asset).sort("started_at", descending=True) if rows.height else rows
    history = [_entry(r) for r in mine.iter_rows(named=True)] if rows.height else []
    for i, entry in enumerate(history):
        entry["changed"] = changed(entry, history[i + 1] if i + 1 < len(history) else None)
    return {"movie": movie_key, "asset": asset,
            "chain": chain(rows, asset, current[1]) if current and rows.height else [], "history": history}
