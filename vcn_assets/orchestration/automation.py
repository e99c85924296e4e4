"""The pipeline job and the new-movie sensor.

Usage: enable ``new_movies_sensor`` in the UI (or ``dagster dev`` with it running): each new file in
the movies folder becomes a partition and one run of ``vcn_pipeline`` for it.
"""

from __future__ import annotations

import dagster as dg

from vcn_assets.orchestration.partitions import MOVIES, discover
from vcn_assets.orchestration.resources import VcnResource

PIPELINE_ASSETS = ("shots", "tracks", "crops", "finetuned_checkpoint", "soft_matches", "clusters", "evaluation")

vcn_pipeline = dg.define_asset_job(
    "vcn_pipeline",
    selection=dg.AssetSelection.assets(*PIPELINE_ASSETS),
    description="All per-movie stages for one movie partition.",
)


@dg.sensor(job=vcn_pipeline, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def new_movies_sensor(context: dg.SensorEvaluationContext, vcn: VcnResource) -> dg.SensorResult:
    """Adds every new movie file as a partition and requests one run for it."""
    found = discover(vcn.movies_path)
    known = set(context.instance.get_dynamic_partitions(MOVIES.name))
    new = sorted(set(found) - known)
    for key in new:
        context.log.info("new movie %s -> partition %s", found[key], key)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=k, run_key=f"new-{k}") for k in new],
        dynamic_partitions_requests=[MOVIES.build_add_request(new)] if new else [],
    )
