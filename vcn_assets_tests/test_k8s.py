"""Kubernetes: every step carries a ``dagster-k8s/config`` op tag that the other executors ignore, and
(when dagster-k8s is installed) dagster-k8s turns it into the step pod's resources. No cluster is used."""

from __future__ import annotations

import json

from vcn_assets.orchestration.automation import PIPELINE_ASSETS
from vcn_assets.orchestration.k8s import (
    GPU_RESOURCE,
    GPU_STEPS,
    K8S_CONFIG_TAG,
    K8S_GPU_ENV,
    STEP_REQUESTS,
    k8s_op_tags,
)


def test_gpu_only_on_the_gpu_steps_and_only_when_asked() -> None:
    for asset in PIPELINE_ASSETS:
        plain = k8s_op_tags(asset, {})[K8S_CONFIG_TAG]["container_config"]["resources"]
        assert plain == {"requests": STEP_REQUESTS}
        gpu = k8s_op_tags(asset, {K8S_GPU_ENV: "1"})[K8S_CONFIG_TAG]["container_config"]["resources"]
        assert gpu.get("limits") == ({GPU_RESOURCE: "1"} if asset in GPU_STEPS else None)


def test_every_pipeline_step_carries_its_tag() -> None:
    from vcn_assets.definitions import defs

    job = defs.resolve_job_def("vcn_pipeline")
    assert job.executor_def.name == "in_process"  # the tag changes nothing here
    for asset in PIPELINE_ASSETS:
        tag = job.graph.node_named(asset).definition.tags[K8S_CONFIG_TAG]
        assert json.loads(tag) == k8s_op_tags(asset)[K8S_CONFIG_TAG]


def test_dagster_k8s_renders_the_tag_into_step_pods() -> None:
    """dagster-k8s (the `k8s` extra, installed with the tests) builds each step's pod from the op tag."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    from vcn_assets.definitions_k8s import defs

    assert defs.resolve_job_def("vcn_pipeline").executor_def.name == "k8s"
    config = DagsterK8sJobConfig(job_image="vcn-assets:test", dagster_home="/opt/dagster/dagster_home",
                                 instance_config_map="dagster-instance")
    for asset in PIPELINE_ASSETS:
        tags = {K8S_CONFIG_TAG: json.dumps(k8s_op_tags(asset, {K8S_GPU_ENV: "1"})[K8S_CONFIG_TAG])}
        pod = construct_dagster_k8s_job(config, ["dagster", "api", "execute_step"], f"step-{asset.replace('_', '-')}",
                                        get_user_defined_k8s_config(tags))
        resources = pod.spec.template.spec.containers[0].resources
        assert resources.requests == STEP_REQUESTS
        assert (resources.limits or {}).get(GPU_RESOURCE) == ("1" if asset in GPU_STEPS else None)
