"""Fingerprint caching and lineage for every per-movie asset.

Usage (inside an asset)::

    stage = Stage("tracks", CODE_VERSIONS["tracks"], describe(cfg), model_identity, ["shots"])
    return materialize_stage(context, vcn, stage, compute)   # compute() -> Computed(frames, metadata)

An asset's fingerprint hashes (its inputs' data versions, its config, its code version, the model
identity). When the stored rows carry the same fingerprint (the ``cache_index`` row, written in
the same transaction as the rows) the asset is not recomputed: it reports ``cache: hit`` and the
stored data version. Data versions are content hashes, so a recomputation that yields identical
data leaves downstream fingerprints unchanged and stops the cascade. Every materialisation, hit,
miss or failure, appends one ``lineage`` row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import dagster as dg
import polars as pl
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # the tag Dagster reads versions from

from vcn_assets.orchestration.resources import VcnResource

CODE_VERSIONS = {
    "shots": "shots-2", "tracks": "tracks-2", "crops": "crops-2", "finetuned_checkpoint": "finetune-3",
    "soft_matches": "match-3", "clusters": "cluster-3", "evaluation": "evaluation-1",
}


@dataclass(frozen=True)
class Stage:
    asset: str
    config: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()

    @property
    def code_version(self) -> str:
        return CODE_VERSIONS[self.asset]


@dataclass(frozen=True)
class Computed:
    frames: dict[str, pl.DataFrame]
    metadata: dict[str, Any]
    data_version: str


def fingerprint(stage: Stage, inputs: dict[str, str]) -> str:
    payload = {"asset": stage.asset, "code_version": stage.code_version, "config": stage.config,
               "model": stage.model, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_versions(vcn: VcnResource, key: str, stage: Stage, extra: dict[str, str]) -> dict[str, str]:
    """Data versions of the stage's inputs: ``extra`` (e.g. the movie file's hash) plus the stored
    versions of its upstream assets (which must have been materialised)."""
    store = vcn.store()
    versions = dict(extra)
    for name in stage.upstream:
        entry = store.cache_entry(key, name)
        if entry is None:
            raise dg.Failure(description=f"movie {key!r}: `{name}` has no stored result; materialise it first",
                             allow_retries=False)
        versions[name] = entry[1]
    return versions


def _lineage(context: dg.AssetExecutionContext, stage: Stage, key: str, fp: str, inputs: dict[str, str],
             started: datetime, version: str | None, counts: dict[str, int], cache: str, status: str) -> dict:
    return {
        "run_id": context.run.run_id, "movie_key": key, "asset": stage.asset, "fingerprint": fp,
        "inputs": json.dumps(inputs, sort_keys=True), "data_version": version,
        "config": json.dumps(stage.config, sort_keys=True, default=str), "code_version": stage.code_version,
        "model": json.dumps(stage.model, sort_keys=True, default=str), "started_at": started,
        "ended_at": datetime.now(timezone.utc).replace(tzinfo=None), "row_counts": json.dumps(counts),
        "cache": cache, "status": status,
    }


def _earlier_metadata(context: dg.AssetExecutionContext, key: str, version: str) -> dict[str, Any]:
    """The pictures and figures of the latest materialisation of this partition when it holds the
    same data version, so a cache hit still shows them in the UI (empty otherwise)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[key]), limit=1).records
    if not records:
        return {}
    event = records[0].asset_materialization
    if event is None or (event.tags or {}).get(DATA_VERSION_TAG) != version:
        return {}
    return {k: v for k, v in event.metadata.items() if k not in ("cache", "fingerprint", "inputs", "row_counts")}


def materialize_stage(
    context: dg.AssetExecutionContext, vcn: VcnResource, stage: Stage, compute: Callable[[], Computed],
    extra_inputs: dict[str, str] | None = None, still_valid: Callable[[], bool] = lambda: True,
) -> dg.MaterializeResult:
    """Reuse the stored result when the fingerprint matches (unless ``vcn.force``), else compute,
    write rows + cache entry in one transaction; record lineage either way."""
    key = context.partition_key
    started = datetime.now(timezone.utc).replace(tzinfo=None)
    store = vcn.store()
    inputs = input_versions(vcn, key, stage, extra_inputs or {})
    fp = fingerprint(stage, inputs)
    cached = store.cache_entry(key, stage.asset)
    base = {"fingerprint": fp, "inputs": inputs, "code_version": stage.code_version, "config": stage.config}
    if not vcn.force and cached is not None and cached[0] == fp and still_valid():
        store.append_lineage(_lineage(context, stage, key, fp, inputs, started, cached[1], {}, "hit", "success"))
        shown = {**_earlier_metadata(context, key, cached[1]), "cache": "hit", **base}
        return dg.MaterializeResult(metadata=shown, data_version=dg.DataVersion(cached[1]))
    try:
        out = compute()
        store.replace(key, out.frames, (stage.asset, fp, out.data_version))
    except BaseException:
        store.append_lineage(_lineage(context, stage, key, fp, inputs, started, None, {}, "miss", "failed"))
        raise
    counts = {t: df.height for t, df in out.frames.items()}
    store.append_lineage(_lineage(context, stage, key, fp, inputs, started, out.data_version, counts, "miss", "success"))
    return dg.MaterializeResult(metadata={**out.metadata, "cache": "miss", "row_counts": counts, **base},
                                data_version=dg.DataVersion(out.data_version))
