"""Movies as dynamic partitions: safe slug keys, confined paths.

Usage::

    key = movie_key("The Big Bang, 'Pilot'.mp4")     # "the-big-bang-pilot-1f2e3d4c"
    path = resolve_movie(movies_dir, key)             # the file, or a clear error

A key is a slug of the file name: lowercase ASCII letters, digits, ``-`` and ``_``. A plain name
(``ep1.mp4``) keeps its stem as key; any other name gets its slug plus 8 hex digits of the sha1
of the full file name, so different names never share a key. Keys never contain path separators
or ``..``; movies are only ever looked up inside the configured movies directory.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import dagster as dg

MOVIES = dg.DynamicPartitionsDefinition(name="movies")
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".m4v", ".webm", ".mpg", ".mpeg", ".ts"})
_PLAIN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,59}$")


def movie_key(file_name: str) -> str:
    """The partition key of a movie file name (see module docstring)."""
    name = Path(file_name).name
    stem, ext = Path(name).stem, Path(name).suffix.lower()
    if _PLAIN.match(stem) and ext == ".mp4":
        return stem
    ascii_ = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_).strip("-")[:48] or "movie"
    return f"{slug}-{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def discover(movies_dir: Path) -> dict[str, Path]:
    """Movie files directly inside ``movies_dir`` by partition key (hidden files ignored)."""
    if not movies_dir.is_dir():
        return {}
    found = {}
    for p in sorted(movies_dir.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_EXTENSIONS:
            found[movie_key(p.name)] = p
    return found


def resolve_movie(movies_dir: Path, key: str) -> Path:
    """The file of partition ``key`` inside ``movies_dir``; FileNotFoundError names both."""
    path = discover(movies_dir).get(key)
    if path is None:
        raise FileNotFoundError(f"movie {key!r}: no matching file in {movies_dir} (moved or deleted?)")
    root = movies_dir.resolve()
    if root not in path.resolve().parents:
        raise PermissionError(f"movie {key!r}: {path} resolves outside {root}")
    return path
