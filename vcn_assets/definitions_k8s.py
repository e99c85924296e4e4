"""The code location for Kubernetes: every step of a run in its own pod (``dagster_k8s.k8s_job_executor``).

Usage (the Helm chart's code-location server; see ``deploy/k8s/README.md``)::

    dagster api grpc -m vcn_assets.definitions_k8s -h 0.0.0.0 -p 3030

Needs ``pip install dagster-k8s`` (the release matching dagster, e.g. 0.29.x for dagster 1.13.x) and an
instance whose run launcher is the ``K8sRunLauncher``. Each step pod takes its resource requests, and
on the GPU-heavy steps a GPU when ``$VCN_K8S_GPU=1``, from the step's ``dagster-k8s/config`` op tag
(``orchestration/k8s.py``). Not tested on a real cluster.
"""

from __future__ import annotations

from dagster_k8s import k8s_job_executor

from vcn_assets.definitions import build_definitions

defs = build_definitions(k8s_job_executor)
