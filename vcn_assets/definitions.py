"""The Dagster code location: assets, jobs, sensor, schedule and the project resource.

``build_definitions(executor)`` assembles them around the executor of the default jobs (and of the
UI's "Materialize"); ``defs`` runs each movie's steps in the run's own process.
``vcn_assets.definitions_k8s`` is the same with Kubernetes' per-step pods.
"""

from __future__ import annotations

import dagster as dg

from vcn_assets.orchestration import assets, identity_assets
from vcn_assets.orchestration.automation import (
    new_movies_sensor,
    refresh_schedule,
    vcn_pipeline,
    vcn_pipeline_dask,
)
from vcn_assets.orchestration.resources import VcnResource

ALL_ASSETS = [
    assets.movie_file, assets.shots, assets.tracks, assets.crops,
    identity_assets.finetuned_checkpoint, identity_assets.soft_matches, identity_assets.clusters,
    identity_assets.evaluation,
]



def build_definitions(executor: dg.ExecutorDefinition) -> dg.Definitions:
    """Everything of the code location; ``executor`` runs ``vcn_pipeline`` and the asset graph's runs
    (``vcn_pipeline_dask`` brings its own: each step a task on a Dask cluster)."""
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[vcn_pipeline, vcn_pipeline_dask],
        sensors=[new_movies_sensor],
        schedules=[refresh_schedule],
        resources={"vcn": VcnResource()},
        executor=executor,
    )


# One process per run: the stages of a movie form a chain and the face models stay loaded.
defs = build_definitions(dg.in_process_executor)


def dask_pipeline_job() -> dg.JobDefinition:
    """``vcn_pipeline_dask`` resolved against these definitions: ``dg.reconstructable(dask_pipeline_job)``
    is what ``dg.execute_job`` needs to run it from Python (Dask workers rebuild the job from it)."""
    return defs.resolve_job_def("vcn_pipeline_dask")
