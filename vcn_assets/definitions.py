"""The Dagster code location: assets, job, sensor and the project resource."""

from __future__ import annotations

import dagster as dg

from vcn_assets.orchestration import assets, identity_assets
from vcn_assets.orchestration.automation import new_movies_sensor, refresh_schedule, vcn_pipeline
from vcn_assets.orchestration.resources import VcnResource

ALL_ASSETS = [
    assets.movie_file, assets.shots, assets.tracks, assets.crops,
    identity_assets.finetuned_checkpoint, identity_assets.soft_matches, identity_assets.clusters,
    identity_assets.evaluation,
]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[vcn_pipeline],
    sensors=[new_movies_sensor],
    schedules=[refresh_schedule],
    resources={"vcn": VcnResource()},
    # One process per run: the stages of a movie form a chain and the face models stay loaded.
    executor=dg.in_process_executor,
)
