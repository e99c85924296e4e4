"""The Dagster code location: assets, job, sensor and the project resource."""

from __future__ import annotations

import dagster as dg

from vcn_assets.orchestration import assets
from vcn_assets.orchestration.automation import new_movies_sensor, vcn_pipeline
from vcn_assets.orchestration.resources import VcnResource

defs = dg.Definitions(
    assets=[assets.movie_file, assets.shots, assets.tracks, assets.crops],
    jobs=[vcn_pipeline],
    sensors=[new_movies_sensor],
    resources={"vcn": VcnResource()},
    # One process per run: the stages of a movie form a chain and the face models stay loaded.
    executor=dg.in_process_executor,
)
