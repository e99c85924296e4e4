"""Kubernetes settings of each step, as the ``dagster-k8s/config`` op tag (read only by dagster-k8s).

Usage::

    @dg.asset(..., op_tags=k8s_op_tags("tracks"))    # every per-movie asset carries one

Only ``dagster_k8s`` reads this tag: its ``k8s_job_executor`` turns it into the step pod's resource
requests and limits (``vcn_assets.definitions_k8s``, see ``deploy/k8s/README.md``). The in-process and
Dask executors ignore op tags, so on any other deployment the tag changes nothing.

A step requests ``STEP_REQUESTS`` on every Kubernetes deployment. The GPU-heavy steps (face detection
and embedding, Stage 2 training) also ask for one GPU (limit ``nvidia.com/gpu: 1``) when
``$VCN_K8S_GPU`` is ``1`` where the definitions load: off by default, so a cluster without GPU nodes
can still schedule every step. Set it in the code location's environment (Helm
``dagster-user-deployments.deployments[].env``), and set the steps' device knobs to ``cuda`` or ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

K8S_CONFIG_TAG = "dagster-k8s/config"
K8S_GPU_ENV = "VCN_K8S_GPU"
GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource name
GPU_STEPS = ("tracks", "crops", "finetuned_checkpoint")  # detector / embedder / Stage 2 training
# One core and 2 GiB per step: the largest peak RSS the README's benchmarks measured is 1.19 GB (Stages 2-4 on
# 5,000 synthetic tracks); Stage 1 at most 868 MB (dlib backend, 1- and 5-minute movies). Limits are left to
# the cluster's defaults, so a longer movie may use more memory than it requested.
STEP_REQUESTS = {"cpu": "1", "memory": "2Gi"}


def k8s_op_tags(asset: str, environ: Mapping[str, str] = os.environ) -> dict[str, dict]:
    """The ``dagster-k8s/config`` op tag of ``asset``'s step."""
    resources: dict[str, dict] = {"requests": dict(STEP_REQUESTS)}
    if asset in GPU_STEPS and environ.get(K8S_GPU_ENV) == "1":
        resources["limits"] = {GPU_RESOURCE: "1"}  # extended resources are requested through their limit
    return {K8S_CONFIG_TAG: {"container_config": {"resources": resources}}}
