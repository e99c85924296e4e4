"""Running the per-movie steps on a Dask cluster: the executor of the ``vcn_pipeline_dask`` job.

Usage::

    export VCN_DASK_SCHEDULER=tcp://10.0.0.5:8786    # a running `dask scheduler`, workers attached
    # then launch `vcn_pipeline_dask` for a movie partition (UI "Jobs", a backfill over partitions,
    # or `dagster job execute -m vcn_assets.definitions -j vcn_pipeline_dask --tags ...`)

Each step (``shots``, ``tracks``, ...) of a run becomes one Dask task, submitted by the run's own
process: a worker rebuilds the job from ``vcn_assets.definitions`` (so every worker needs this
package installed), opens the run's Dagster instance from its reference (so that instance must be
reachable from every worker: the same ``DAGSTER_HOME`` on a shared disk, or Postgres storage) and
runs the step with ``dagster_dask``'s worker function. The stages of one movie are a chain, so one
run occupies one worker at a time; several runs (the run queue's ``max_concurrent_runs``, or a
backfill) share the cluster's workers. A worker keeps its face models loaded between steps
(``resources._MODELS`` lives per process).

Why not ``dagster_dask.dask_executor`` itself: with dagster-dask 0.29.27 and dask/distributed
2026.8 its submission fails (Dask walks tuples in task arguments, and a ``DagsterRun`` is a tuple
that forbids iteration), and it names each Dask task ``<job>.<step>``, so two runs of one job at
once (two movies) would share one Dask task per step and the second movie would never be computed
(dagster-io/dagster#21418). This executor submits the same worker function, with the arguments in
one plain object and a task key that includes the run id.

The scheduler's address comes from the run config (``execution: {config: {address: ...}}``) or,
when that is absent, from ``$VCN_DASK_SCHEDULER`` in the run's process; with neither the run fails
with a message saying so (it never falls back to running in-process). ``dask.distributed`` is
imported only when such a run starts, so loading the definitions stays fast and needs no Dask; the
packages come with the ``dask`` extra (``pip install 'vcn_assets[dask]'``, part of ``[test]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import DagsterEvent
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.retries import RetryMode
from dagster._core.instance.ref import InstanceRef
from dagster._utils import iterate_with_context

DASK_SCHEDULER_ENV = "VCN_DASK_SCHEDULER"


class DaskAddressMissing(ValueError):
    """Neither the run config nor ``$VCN_DASK_SCHEDULER`` names a Dask scheduler."""


def scheduler_address(configured: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The scheduler address to connect to: the run config's, else ``$VCN_DASK_SCHEDULER``."""
    address = configured or environ.get(DASK_SCHEDULER_ENV, "")
    if not address:
        raise DaskAddressMissing(
            f"the Dask executor needs a scheduler address: set ${DASK_SCHEDULER_ENV} (e.g. tcp://host:8786) "
            "where the run starts, or the run config's execution.config.address"
        )
    return address


@dataclass(frozen=True)
class StepTask:
    """Everything a worker needs to run one step of one run, as one object Dask does not look into."""

    recon_job: ReconstructableJob
    dagster_run: dg.DagsterRun
    run_config: Mapping[str, Any]
    step_key: str
    instance_ref: InstanceRef
    known_state: KnownExecutionState | None


@dataclass(frozen=True)
class StepEvents:
    """A step's events (wrapped so Dask does not walk them when it sizes a result: it cannot), and
    whether the step failed or was not run because an upstream step failed."""

    events: Sequence[DagsterEvent]
    failed: bool


def run_step(dependencies: Sequence[StepEvents], task: StepTask) -> StepEvents:
    """On a Dask worker: run one step and return its events; ``dependencies`` are the upstream steps'
    results. After an upstream failure the step is not run (as the in-process executor skips it): it
    would otherwise run on whatever an earlier run left in the store."""
    from dagster_dask.executor import query_on_dask_worker

    if any(d.failed for d in dependencies):
        return StepEvents((), failed=True)
    events = query_on_dask_worker(dependencies, task.recon_job, task.dagster_run, task.run_config,
                                  [task.step_key], task.instance_ref, task.known_state)
    return StepEvents(events, failed=any(e.is_step_failure for e in events))


def task_key(job_name: str, step_key: str, run_id: str) -> str:
    """The Dask task key of a step: unique per run, so concurrent runs never share a task."""
    return f"{job_name}.{step_key}.{run_id}"


class VcnDaskExecutor(dg.Executor):
    """Submits every step of a run to the Dask scheduler at ``address``, upstream steps first."""

    def __init__(self, address: str) -> None:
        self.address = address

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        from dagster_dask.executor import get_dask_resource_requirements
        from dask.distributed import Client, as_completed

        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError("Dask execution needs a persistent DagsterInstance")
        run = plan_context.dagster_run
        with Client(self.address) as client:
            futures: dict[str, Any] = {}
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    upstream = [futures[k] for step_input in step.step_inputs for k in step_input.dependency_keys]
                    task = StepTask(plan_context.reconstructable_job, run, plan_context.run_config, step.key,
                                    plan_context.instance.get_ref(), execution_plan.known_state)
                    futures[step.key] = client.submit(
                        run_step, upstream, task, key=task_key(plan_context.job_name, step.key, run.run_id),
                        resources=get_dask_resource_requirements(step.tags))
            done = as_completed(list(futures.values()), with_results=True)
            for _future, result in iterate_with_context(raise_execution_interrupts, done):
                yield from result.events


@dg.executor(
    name="vcn_dask",
    config_schema={"address": dg.Field(
        dg.StringSource, is_required=False,
        description=f"Dask scheduler address, e.g. tcp://10.0.0.5:8786; unset = ${DASK_SCHEDULER_ENV}.",
    )},
    requirements=multiple_process_executor_requirements(),
)
def vcn_dask_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Each step a task on an existing Dask cluster (address from config, else $VCN_DASK_SCHEDULER)."""
    _require_dask()
    return VcnDaskExecutor(scheduler_address(init_context.executor_config.get("address")))


def _require_dask() -> None:
    """Fail the run at its start, naming the fix, when the ``dask`` extra is not installed."""
    try:
        import dagster_dask  # noqa: F401
        import dask.distributed  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the vcn_pipeline_dask job needs the `dask` extra ({exc}): "
                          "pip install 'vcn_assets[dask]' here and on every Dask worker") from exc
