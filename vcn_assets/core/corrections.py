"""A reviewer's corrections to one movie's clustering, kept in a JSON file that survives re-runs.

Usage::

    corr = Corrections.load(path)                      # an absent file = no corrections
    corr = corr.add_name("Sheldon", ref)                # ref = TrackRef.of_track(track_id, boxes)
    corr.save(path)                                     # atomic write
    c = resolve(corr, boxes, track_ids)                 # anchors -> rows of the current track list
    c.must_link, c.cannot_link, c.not_face, c.names     # what Stage 4 honours

File format (``version`` 1)::

    {"version": 1,
     "must_link":   [[REF, REF], ...],       # these two tracks are one person
     "cannot_link": [[REF, REF], ...],       # these two tracks are two people
     "names":       {"Sheldon": [REF, ...]}, # the cluster holding these tracks is called Sheldon
     "not_face":    [REF, ...]}              # not a face: left out of the clustering

A REF is ``{"track": 12, "frame": 340, "x": 512.0, "y": 201.5}``: the track id as the reviewer saw
it plus an anchor, a point inside one of its boxes. Names and links attach to tracks, never to
cluster ids (those change on every re-run). Track ids change when Stage 1 is re-run with other
settings, so a REF with an anchor resolves to the current track whose box at ``frame`` contains the
point (the one with the nearest centre if several do); a bare integer REF (hand-written files)
resolves to that track id. A REF that resolves to no current track is reported, never guessed.
Tracks given the same name are must-linked, tracks given different names are cannot-linked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

VERSION = 1


class CorrectionsError(ValueError):
    """The corrections file is unreadable or contradicts itself; the message names the file."""


@dataclass(frozen=True)
class TrackRef:
    track: int
    frame: int | None = None
    x: float | None = None
    y: float | None = None

    @classmethod
    def of_track(cls, track_id: int, track_of_box: NDArray[np.int64], frame_of_box: NDArray[np.int64],
                 xyxy: NDArray[np.float32]) -> TrackRef:
        """A reference anchored at the centre of the track's middle box."""
        rows = np.flatnonzero(track_of_box == track_id)
        if len(rows) == 0:
            raise CorrectionsError(f"track {track_id} does not exist in this movie")
        r = rows[len(rows) // 2]
        x1, y1, x2, y2 = (float(v) for v in xyxy[r])
        return cls(int(track_id), int(frame_of_box[r]), round((x1 + x2) / 2, 1), round((y1 + y2) / 2, 1))

    def to_json(self) -> dict | int:
        if self.frame is None:
            return self.track
        return {"track": self.track, "frame": self.frame, "x": self.x, "y": self.y}

    @classmethod
    def from_json(cls, raw: object, where: str) -> TrackRef:
        if isinstance(raw, bool) or not isinstance(raw, int | dict):
            raise CorrectionsError(f"{where}: a track reference must be an integer or an object, got {raw!r}")
        if isinstance(raw, int):
            return cls(raw)
        try:
            anchor = [raw[k] for k in ("frame", "x", "y")] if "frame" in raw else None
            if anchor is None:
                return cls(int(raw["track"]))
            return cls(int(raw["track"]), int(anchor[0]), float(anchor[1]), float(anchor[2]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorrectionsError(f"{where}: bad track reference {raw!r} (needs track, and frame/x/y together)") from exc

    def describe(self) -> str:
        return f"track {self.track}" + (f" (frame {self.frame} at {self.x:.0f},{self.y:.0f})" if self.frame is not None else "")


Pair = tuple[TrackRef, TrackRef]


@dataclass(frozen=True)
class Corrections:
    must_link: tuple[Pair, ...] = ()
    cannot_link: tuple[Pair, ...] = ()
    names: tuple[tuple[str, tuple[TrackRef, ...]], ...] = ()
    not_face: tuple[TrackRef, ...] = ()
    source: str = field(default="(none)", compare=False)

    @classmethod
    def load(cls, path: Path) -> Corrections:
        """The corrections in ``path``; no corrections when the file does not exist."""
        if not path.exists():
            return cls(source=str(path))
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorrectionsError(f"{path}: not a readable corrections file ({exc})") from exc
        return cls.from_json(raw, str(path))

    @classmethod
    def from_json(cls, raw: object, source: str) -> Corrections:
        if not isinstance(raw, dict):
            raise CorrectionsError(f"{source}: expected a JSON object")
        unknown = set(raw) - {"version", "must_link", "cannot_link", "names", "not_face"}
        if unknown:
            raise CorrectionsError(f"{source}: unknown keys {sorted(unknown)}")
        if raw.get("version", VERSION) != VERSION:
            raise CorrectionsError(f"{source}: version {raw.get('version')!r} is not supported (expected {VERSION})")
        names = raw.get("names", {})
        if not isinstance(names, dict) or not all(isinstance(v, list) for v in names.values()):
            raise CorrectionsError(f"{source}: 'names' must map a name to a list of track references")
        return cls(
            must_link=_pairs(raw.get("must_link", []), f"{source}: must_link"),
            cannot_link=_pairs(raw.get("cannot_link", []), f"{source}: cannot_link"),
            names=tuple((_name(n, source), tuple(TrackRef.from_json(r, f"{source}: names[{n!r}]") for r in refs))
                        for n, refs in sorted(names.items())),
            not_face=tuple(TrackRef.from_json(r, f"{source}: not_face") for r in _list(raw.get("not_face", []),
                                                                                      f"{source}: not_face")),
            source=source,
        )

    def to_json(self) -> dict:
        return {
            "version": VERSION,
            "must_link": [[a.to_json(), b.to_json()] for a, b in self.must_link],
            "cannot_link": [[a.to_json(), b.to_json()] for a, b in self.cannot_link],
            "names": {n: [r.to_json() for r in refs] for n, refs in self.names},
            "not_face": [r.to_json() for r in self.not_face],
        }

    def canonical(self) -> str:
        """A stable text of the content (what the clusters fingerprint depends on)."""
        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)

    def version(self) -> str:
        """Content hash: the data version of the corrections as an input of ``clusters``."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Write atomically: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def add_must_link(self, a: TrackRef, b: TrackRef) -> Corrections:
        return replace(self, must_link=(*self.must_link, (a, b)))

    def add_cannot_link(self, a: TrackRef, b: TrackRef) -> Corrections:
        return replace(self, cannot_link=(*self.cannot_link, (a, b)))

    def add_not_face(self, ref: TrackRef) -> Corrections:
        return replace(self, not_face=(*self.not_face, ref))

    def add_name(self, name: str, ref: TrackRef) -> Corrections:
        """Name ``ref``'s track (a track carries one name: an earlier name of the same track is dropped)."""
        name = _name(name, self.source)
        kept = {n: tuple(r for r in refs if r.track != ref.track) for n, refs in self.names}
        kept[name] = (*kept.get(name, ()), ref)
        return replace(self, names=tuple(sorted((n, refs) for n, refs in kept.items() if refs)))

    def __len__(self) -> int:
        return len(self.must_link) + len(self.cannot_link) + sum(len(r) for _, r in self.names) + len(self.not_face)


def _list(raw: object, where: str) -> list:
    if not isinstance(raw, list):
        raise CorrectionsError(f"{where}: expected a list")
    return raw


def _pairs(raw: object, where: str) -> tuple[Pair, ...]:
    out = []
    for item in _list(raw, where):
        if not isinstance(item, list) or len(item) != 2:
            raise CorrectionsError(f"{where}: each entry must be a pair of track references, got {item!r}")
        out.append((TrackRef.from_json(item[0], where), TrackRef.from_json(item[1], where)))
    return tuple(out)


def _name(name: object, source: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(c in name for c in "\n\r\t"):
        raise CorrectionsError(f"{source}: a name must be 1-200 characters on one line, got {name!r}")
    return name.strip()


@dataclass(frozen=True)
class Resolved:
    """Corrections as rows of the current track list (``track_ids``)."""

    must_link: list[tuple[int, int]]
    cannot_link: list[tuple[int, int]]
    name_of: dict[int, str]
    not_face: list[int]
    unresolved: list[str]

    @property
    def linked(self) -> set[int]:
        """Rows the reviewer put into some cluster (must-links and names)."""
        return {r for pair in self.must_link for r in pair} | set(self.name_of)


def resolve(corr: Corrections, track_of_box: NDArray[np.int64], frame_of_box: NDArray[np.int64],
            xyxy: NDArray[np.float32], track_ids: NDArray[np.int64]) -> Resolved:
    """Map every reference to a row of ``track_ids``; contradictions raise CorrectionsError."""
    row_of = {int(t): i for i, t in enumerate(track_ids.tolist())}
    unresolved: list[str] = []

    def row(ref: TrackRef) -> int | None:
        track = _anchor_track(ref, track_of_box, frame_of_box, xyxy) if ref.frame is not None else ref.track
        if track is None or track not in row_of:
            unresolved.append(ref.describe())
            return None
        return row_of[track]

    def pairs(items: tuple[Pair, ...]) -> list[tuple[int, int]]:
        rows = [(row(a), row(b)) for a, b in items]
        return [(a, b) for a, b in rows if a is not None and b is not None and a != b]

    must, cannot = pairs(corr.must_link), pairs(corr.cannot_link)
    name_of: dict[int, str] = {}
    for name, refs in corr.names:
        for r in (row(ref) for ref in refs):
            if r is not None:
                name_of[r] = name
    not_face = sorted({r for r in (row(ref) for ref in corr.not_face) if r is not None})
    out = Resolved(must, cannot, name_of, not_face, unresolved)
    _check_consistent(out, track_ids, corr.source)
    return out


def _anchor_track(ref: TrackRef, track_of_box: NDArray[np.int64], frame_of_box: NDArray[np.int64],
                  xyxy: NDArray[np.float32]) -> int | None:
    at = np.flatnonzero(frame_of_box == ref.frame)
    if len(at) == 0:
        return None
    b = xyxy[at]
    inside = (b[:, 0] <= ref.x) & (ref.x <= b[:, 2]) & (b[:, 1] <= ref.y) & (ref.y <= b[:, 3])
    if not inside.any():
        return None
    centre = (b[:, :2] + b[:, 2:]) / 2
    dist = np.hypot(centre[:, 0] - ref.x, centre[:, 1] - ref.y)
    return int(track_of_box[at[np.flatnonzero(inside)[np.argmin(dist[inside])]]])


def components(n: int, must_link: list[tuple[int, int]]) -> NDArray[np.int64]:
    """Component label per row (0..k-1) of the must-link graph."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in must_link:
        parent[find(a)] = find(b)
    return np.unique([find(i) for i in range(n)], return_inverse=True)[1].astype(np.int64)


def link_matrices(n: int, c: Resolved) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """(component of each row, cannot-link matrix) with names turned into links: one name = one
    component, two names = cannot-link."""
    must = list(c.must_link)
    by_name: dict[str, list[int]] = {}
    for r, name in c.name_of.items():
        by_name.setdefault(name, []).append(r)
    for rows in by_name.values():
        must += [(rows[0], r) for r in rows[1:]]
    comp = components(n, must)
    cannot = np.zeros((n, n), bool)
    for a, b in c.cannot_link:
        cannot[a, b] = cannot[b, a] = True
    named = list(by_name.values())
    for i, rows_i in enumerate(named):
        for rows_j in named[i + 1:]:
            cannot[np.ix_(rows_i, rows_j)] = True
            cannot[np.ix_(rows_j, rows_i)] = True
    return comp, cannot


def _check_consistent(c: Resolved, track_ids: NDArray[np.int64], source: str) -> None:
    n = len(track_ids)
    comp, cannot = link_matrices(n, c)
    a, b = np.nonzero(np.triu(cannot & (comp[:, None] == comp[None, :]), 1))
    if len(a):
        raise CorrectionsError(
            f"{source}: tracks {int(track_ids[a[0]])} and {int(track_ids[b[0]])} are both linked (must-link or "
            f"one name) and kept apart (cannot-link or two names); remove one of the two corrections")
    dropped = set(c.not_face) & c.linked
    if dropped:
        raise CorrectionsError(
            f"{source}: track {int(track_ids[min(dropped)])} is marked not a face and also linked or named")
