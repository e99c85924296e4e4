"""The pipeline jobs and the new-movie sensor.

Usage: enable ``new_movies_sensor`` in the UI (or ``dagster dev`` with it running): each new file in
the movies folder becomes a partition and one run of the pipeline for it: ``vcn_pipeline`` (every
step in the run's own process), or ``vcn_pipeline_dask`` (every step a task on a Dask cluster, see
``executors.py``) when ``$VCN_DASK_SCHEDULER`` is set where the definitions load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from vcn_assets.orchestration.executors import DASK_SCHEDULER_ENV, vcn_dask_executor
from vcn_assets.orchestration.partitions import MOVIES, discover
from vcn_assets.orchestration.resources import VcnResource

PIPELINE_ASSETS = ("shots", "tracks", "crops", "finetuned_checkpoint", "soft_matches", "clusters", "evaluation")

vcn_pipeline = dg.define_asset_job(
    "vcn_pipeline",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    description="All per-movie stages for one movie partition.",
)

vcn_pipeline_dask = dg.define_asset_job(
    "vcn_pipeline_dask",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    executor_def=vcn_dask_executor,
    description=(f"vcn_pipeline with each step a task on a Dask cluster: the scheduler address from the run "
                 f"config's execution.config.address, else ${DASK_SCHEDULER_ENV}."),
)


def automation_job(environ: Mapping[str, str] = os.environ) -> UnresolvedAssetJobDefinition:
    """The job the sensor and the schedule launch: ``vcn_pipeline_dask`` when ``$VCN_DASK_SCHEDULER``
    is set (to anything) where the definitions load, else ``vcn_pipeline``. Both jobs are always
    defined, so a Dask worker rebuilds either whatever its own environment says."""
    return vcn_pipeline_dask if environ.get(DASK_SCHEDULER_ENV) else vcn_pipeline


SENSOR_LOG_MOVIES = 20  # new movies named in the sensor's log line


@dg.sensor(job=automation_job(), minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_movies_sensor(context: dg.SensorEvaluationContext, vcn: VcnResource) -> dg.SensorResult:
    """Adds every new movie file as a partition and requests one run for it."""
    found = discover(vcn.movies_path)
    known = set(context.instance.get_dynamic_partitions(MOVIES.name))
    new = sorted(set(found) - known)
    if new:  # one line per tick, not per movie: a whole catalogue may arrive at once
        shown = ", ".join(f"{found[k].name} -> {k}" for k in new[:SENSOR_LOG_MOVIES])
        more = f" and {len(new) - SENSOR_LOG_MOVIES} more" if len(new) > SENSOR_LOG_MOVIES else ""
        context.log.info("%d new movies: %s%s", len(new), shown, more)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"new-{k}") for k in new],
        dynamic_partitions_requests=[MOVIES.build_add_request(new)] if new else [],
    )


def _corrections_version(vcn: VcnResource, key: str) -> str | None:
    """The corrections file's version; None when it is unreadable (a run then reports why)."""
    from vcn_assets.core.corrections import Corrections, CorrectionsError

    try:
        return Corrections.load(vcn.corrections_path(key)).version()
    except CorrectionsError:
        return None


def stale_movies(vcn: VcnResource, keys: list[str]) -> list[str]:
    """Movies whose stored results are missing or out of date: an asset without a stored result,
    a movie file whose hash differs from the one ``shots`` was computed from, corrections that
    changed since ``clusters`` last ran, or an asset computed by another code version. (Config
    changes made in a run's config are the caller's to re-run.)"""
    from vcn_assets.core.files import file_sha256
    from vcn_assets.orchestration.caching import CODE_VERSIONS

    store = vcn.store()
    found = discover(vcn.movies_path)
    stale = []
    for key in keys:
        if key not in found:
            continue
        index = store.read("cache_index", key)
        entries = dict(zip(index["asset"].to_list(), index["fingerprint"].to_list())) if index.height else {}
        if any(a not in entries for a in PIPELINE_ASSETS if a != "evaluation"):
            stale.append(key)
            continue
        lineage = store.read("lineage", key)
        latest = lineage.filter(lineage["status"] == "success").sort("started_at").group_by("asset").last()
        codes = dict(zip(latest["asset"].to_list(), latest["code_version"].to_list()))
        shots = latest.filter(latest["asset"] == "shots")
        movie_hash = json.loads(shots["inputs"][0]).get("movie_file") if shots.height else None
        clusters = latest.filter(latest["asset"] == "clusters")
        corrections = json.loads(clusters["inputs"][0]).get("corrections") if clusters.height else None
        if (movie_hash != file_sha256(found[key]) or corrections != _corrections_version(vcn, key)
                or any(codes.get(a) != v for a, v in CODE_VERSIONS.items() if a in codes)):
            stale.append(key)
    return stale


@dg.schedule(
    job=automation_job(),
    cron_schedule=os.environ.get("VCN_SCHEDULE_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily (cron from $VCN_SCHEDULE_CRON): one run per movie that is missing or unsynced.",
)
def refresh_schedule(context: dg.ScheduleEvaluationContext, vcn: VcnResource) -> list[dg.RunRequest]:
    keys = sorted(context.instance.get_dynamic_partitions(MOVIES.name))
    tick = f"{context.scheduled_execution_time:%Y%m%d%H%M}"
    return [dg.RunRequest(partition_key=k, run_key=f"refresh-{k}-{tick}") for k in stale_movies(vcn, keys)]
