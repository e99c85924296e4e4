"""Asset checks run with each materialisation (cache hits included): they read the stored rows.

Usage::

    @dg.asset(..., check_specs=[dg.AssetCheckSpec("embeddings_finite", asset="crops")])
    def crops(...):
        result = materialize_stage(...)
        return with_checks(result, [embeddings_finite(store.read("crops", key))])
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg


def with_checks(result: dg.MaterializeResult, checks: Sequence[dg.AssetCheckResult]) -> dg.MaterializeResult:
    """``result`` with ``checks`` attached (a MaterializeResult is immutable)."""
    return dg.MaterializeResult(
        asset_key=result.asset_key, metadata=result.metadata, data_version=result.data_version,
        tags=result.tags, check_results=[*(result.check_results or []), *checks],
    )
