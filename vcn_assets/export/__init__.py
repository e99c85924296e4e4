"""Exports of a movie's clusters: CSV, JSON, thumbnails and a static offline review page.

Usage::

    from vcn_assets.export import export_movie
    written = export_movie(default_store(), "ep1", Path("out"), ("csv", "json", "html"))
    # out/ep1/clusters.csv, out/ep1/clusters.json, out/ep1/index.html, out/ep1/thumbs/*.jpg

``report`` reads a movie's results into dataclasses, ``files`` writes CSV/JSON/thumbnails, ``page``
renders the HTML; this module only puts them together.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vcn_assets.export.files import FORMATS, write_csv, write_json, write_thumbs
from vcn_assets.export.page import render_page
from vcn_assets.export.report import ExportError, MovieReport, read_report
from vcn_assets.store.db import Store

__all__ = ["FORMATS", "ExportError", "export_movie", "read_report", "write_export"]


def write_export(report: MovieReport, folder: Path, formats: Iterable[str]) -> list[Path]:
    """Write the requested formats (a subset of FORMATS) of one movie under ``folder``; the paths
    written. Thumbnails come with the JSON or the page (both refer to them)."""
    formats = set(formats)
    if not formats or formats - set(FORMATS):
        raise ValueError(f"export formats {sorted(formats)}: choose one or more of {', '.join(FORMATS)}")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if "csv" in formats:
        write_csv(report, folder / "clusters.csv")
        written.append(folder / "clusters.csv")
    if "json" in formats:
        write_json(report, folder / "clusters.json")
        written.append(folder / "clusters.json")
    if "html" in formats:
        (folder / "index.html").write_text(render_page(report), encoding="utf-8")
        written.append(folder / "index.html")
    if formats & {"json", "html"}:
        written += write_thumbs(report, folder)
    return written


def export_movie(store: Store, movie_key: str, out_dir: Path, formats: Iterable[str]) -> list[Path]:
    """Read one movie's results and write them under ``out_dir/<movie_key>/``."""
    return write_export(read_report(store, movie_key), out_dir / movie_key, formats)
