"""Asset checks run with each materialisation (cache hits included): they read the stored rows.

Usage::

    @dg.asset(..., check_specs=[dg.AssetCheckSpec("embeddings_finite", asset="crops")])
    def crops(...):
        result = materialize_stage(...)
        return with_checks(result, [embeddings_finite(store.read("crops", key))])

A check reads what is stored, so it reports on cache hits too.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import polars as pl


def with_checks(result: dg.MaterializeResult, checks: Sequence[dg.AssetCheckResult]) -> dg.MaterializeResult:
    """``result`` with ``checks`` attached (a MaterializeResult is immutable)."""
    return _amended(result, {}, checks)


def with_metadata(result: dg.MaterializeResult, extra: dict) -> dg.MaterializeResult:
    """``result`` with ``extra`` metadata entries added (pictures drawn from the stored rows)."""
    return _amended(result, extra, ())


def _amended(result: dg.MaterializeResult, extra: dict, checks: Sequence[dg.AssetCheckResult]) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        asset_key=result.asset_key, metadata={**(result.metadata or {}), **extra}, data_version=result.data_version,
        tags=result.tags, check_results=[*(result.check_results or []), *checks],
    )


def _count_nonfinite(df: pl.DataFrame, column: str) -> int:
    """Rows whose list ``column`` holds a NaN, an infinity or a null."""
    finite = pl.col(column).list.eval(pl.element().is_finite().fill_null(False)).list.all()
    return int(df.select((~finite.fill_null(False)).sum()).item())


def embeddings_finite(crops_df: pl.DataFrame) -> dg.AssetCheckResult:
    """Every stored embedding and view of a ``crops`` table is finite, all embeddings have one length
    D > 0, and each row's views hold ``n_views`` x D values (what finetuning will reshape them to)."""
    crops_df = crops_df.with_columns(pl.col("embedding", "views").cast(pl.List(pl.Float32)))  # fixed-size too
    dims = sorted(crops_df["embedding"].list.len().drop_nulls().unique().to_list())
    dim = dims[0] if len(dims) == 1 else None
    counts = {"n_nonfinite_embeddings": _count_nonfinite(crops_df, "embedding"),
              "n_nonfinite_views": _count_nonfinite(crops_df, "views")}
    problems = [f"{v} crop(s) with non-finite {k[len('n_nonfinite_'):]}" for k, v in counts.items() if v]
    if len(dims) > 1 or dims == [0]:
        problems.append(f"embedding dimensions {dims} (expected one D > 0)")
    if dim:
        shapes = crops_df.select(((pl.col("views").list.len() != pl.col("n_views") * dim).fill_null(True)).sum())
        if shapes.item():
            problems.append(f"{shapes.item()} crop(s) whose views are not n_views x {dim} values")
    return dg.AssetCheckResult(
        check_name="embeddings_finite", passed=not problems,
        metadata={"n_crops": crops_df.height, "dim": dim, **counts,
                  "problems": "; ".join(problems) or "none"},
    )
