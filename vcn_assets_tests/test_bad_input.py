"""Every kind of bad or unusual movie file ends cleanly, and the video reader survives fuzzed files.

One catalogue (a movies folder) holds a good movie and one file per case; the sensor registers them
all; each case runs the whole pipeline. A case either succeeds with valid (possibly empty) results,
or fails with a one-line message naming the file and the problem, leaving no rows and no cache entry
for that movie, while the good movie's results are exactly what they are when it is alone.
``test_dagster_graph.py`` already proves the basic failures; this file adds the catalogue, the
one-line and no-trace guarantees, more kinds of file, and the fuzzing of ``core/video.py``.
"""

from __future__ import annotations

import shutil
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcn_assets.core.video import VideoError, iter_frames, probe
from vcn_assets.definitions import ALL_ASSETS
from vcn_assets.orchestration.automation import PIPELINE_ASSETS, new_movies_sensor
from vcn_assets.orchestration.partitions import movie_key
from vcn_assets.orchestration.resources import VcnResource
from vcn_assets.store.db import SCHEMA, Store
from vcn_assets_tests.clips import BACKGROUNDS, FACE_COLOURS, blob_clip, write_video
from vcn_assets_tests.test_dagster_graph import FAST_FINETUNE, _audio_only, _truncated, failure_message, run

RESULT_TABLES = tuple(t for t in SCHEMA if t != "lineage")  # lineage logs failures by design
GOOD = "good.mp4"


# --- the files ------------------------------------------------------------------------------------


def _mp3_with_cover(path: Path) -> None:
    """A music file: MP3 audio plus cover art (a one-picture video stream marked as attached picture)
    in an MPEG-4 audio file (.m4a), saved under a .mp4 name."""
    m4a = path.with_name(path.stem + ".m4a")
    with av.open(str(m4a), "w", format="mp4") as out:
        audio = out.add_stream("libmp3lame", rate=22050, layout="mono")
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16p", layout="mono")
            frame.sample_rate, frame.pts = 22050, i * 1152
            for p in audio.encode(frame):
                out.mux(p)
        picture = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), format="rgb24")
        for stream, frame in ((audio, None), (cover, picture.reformat(format="yuvj420p")), (cover, None)):
            for p in stream.encode(frame):
                out.mux(p)
    m4a.rename(path)


def _frame(h: int, w: int, face_xy: tuple[int, int] | None, face_hw: tuple[int, int] = (48, 40)) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    f[:] = BACKGROUNDS[0]
    if face_xy is not None:
        x, y = face_xy
        f[y : y + face_hw[0], x : x + face_hw[1]] = FACE_COLOURS[0]
    return f


def _vfr(path: Path) -> None:
    """40 frames with irregular gaps (10-120 ms) between presentation timestamps, one face drifting."""
    gaps_ms = [40, 40, 20, 80, 33, 40, 120, 10, 40, 60] * 4
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 160, 240, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        stream.options = {"crf": "18", "preset": "ultrafast"}
        pts = 0
        for i, gap in enumerate(gaps_ms):
            frame = av.VideoFrame.from_ndarray(_frame(160, 240, (20 + i, 40)), format="bgr24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += gap
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def _uhd(path: Path) -> None:
    """3840x2160, 6 frames, one big face."""
    write_video(path, [_frame(2160, 3840, (1200 + 8 * t, 600), (480, 400)) for t in range(6)])


def _phone(path: Path) -> None:
    """A portrait phone video stored landscape (240x160) with a display matrix "rotate 90 clockwise"
    (ffprobe: rotation of -90 degrees): upright it is 160x240 with the face in its top-right corner."""
    upright = [_frame(240, 160, (100 - t, 20 + t)) for t in range(40)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 160, 240, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        stream.set_display_rotation(-90)  # counter-clockwise degrees, as VideoFrame.rotation reads it
        for f in upright:
            stored = np.ascontiguousarray(np.rot90(f, 1))  # the sensor's (landscape) orientation
            out.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="bgr24")))
        out.mux(stream.encode())


def _unknown_codec(path: Path, src: Path) -> None:
    """A good clip whose H.264 sample entry names a codec FFmpeg does not know (found by the fuzzer:
    such a stream has no codec context, and probing it raised AttributeError)."""
    path.write_bytes(src.read_bytes().replace(b"avc1", b"zzz9"))


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).bytes(64_000))


def _subtitles(path: Path) -> None:
    path.write_text("".join(f"{i}\n00:00:0{i},000 --> 00:00:0{i},900\nline {i}\n\n" for i in range(1, 9)))


@dataclass(frozen=True)
class Case:
    name: str  # file name in the movies folder
    make: Callable[[Path, Path], None]  # (path, a good clip) -> writes the file
    problem: str | None  # None: the run succeeds; else a phrase of the one-line failure message


CASES = [
    Case("empty.mp4", lambda p, src: p.write_bytes(b""), "file is empty (0 bytes)"),
    Case("truncated.mp4", _truncated, "not a readable video file"),
    Case("random.mp4", lambda p, src: _random_bytes(p), "not a readable video file"),
    Case("subtitles.mp4", lambda p, src: _subtitles(p), "contains no video stream"),
    Case("audio_aac.mp4", lambda p, src: _audio_only(p), "contains no video stream"),
    Case("music_cover.mp4", lambda p, src: _mp3_with_cover(p), "contains no video stream"),
    Case("oneframe.mp4", lambda p, src: blob_clip(p, [[0]], shot_len=1), "has 1 frame(s); at least 2"),
    Case("odd_codec.mp4", _unknown_codec, "its video stream's codec is unknown or not decodable"),
    Case("vanished.mp4", lambda p, src: shutil.copy(src, p), "no matching file in"),
    Case("vfr.mp4", lambda p, src: _vfr(p), None),
    Case("uhd.mp4", lambda p, src: _uhd(p), None),
    Case("phone.mp4", lambda p, src: _phone(p), None),
    Case("nofaces.mp4", lambda p, src: blob_clip(p, [[], []]), None),
]


# --- the catalogue run ----------------------------------------------------------------------------


def _rows(data_dir: Path, key: str) -> dict[str, int]:
    """The movie's row count in every result table (one connection: the store creates them all)."""
    with Store(data_dir / "vcn.duckdb").connect(read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE movie_key = ?", [key]).fetchone()[0]
                for t in RESULT_TABLES}


def _versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {e.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]
            for e in result.get_asset_materialization_events()}


def _forced(instance: dg.DagsterInstance, data_dir: Path, key: str) -> dg.ExecuteInProcessResult:
    """``run`` with ``force``: every asset recomputed, none taken from the cache."""
    return dg.materialize(
        ALL_ASSETS, selection=list(PIPELINE_ASSETS), partition_key=key, instance=instance,
        resources={"vcn": VcnResource(data_dir=str(data_dir), backend="fake", force=True)}, raise_on_error=False,
        run_config={"ops": {"finetuned_checkpoint": {"config": FAST_FINETUNE}}},
    )


@dataclass
class Catalogue:
    data_dir: Path
    sensor_keys: list[str]
    results: dict[str, dg.ExecuteInProcessResult]  # by case file name
    good_alone: tuple[dg.ExecuteInProcessResult, dict[str, int]]  # its run and row counts, alone in the folder
    good_amid: tuple[dg.ExecuteInProcessResult, dict[str, int]]  # recomputed after every case ran


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, blob_movie: Path) -> Catalogue:
    """The good movie alone, then every case file added to its folder, registered by one sensor tick
    (``vanished.mp4`` deleted right after), run one by one, and the good movie recomputed."""
    data_dir = tmp_path_factory.mktemp("catalogue")
    movies = data_dir / "movies"
    movies.mkdir()
    shutil.copy(blob_movie, movies / GOOD)
    instance = dg.DagsterInstance.ephemeral()
    alone = run(instance, data_dir, "good")
    good_alone = (alone, _rows(data_dir, "good"))
    for case in CASES:
        case.make(movies / case.name, blob_movie)
    tick = new_movies_sensor(dg.build_sensor_context(
        instance=instance, resources={"vcn": VcnResource(data_dir=str(data_dir))}))
    sensor_keys = [r.partition_key for r in tick.run_requests]
    instance.add_dynamic_partitions("movies", tick.dynamic_partitions_requests[0].partition_keys)
    (movies / "vanished.mp4").unlink()  # gone between the sensor tick and its run
    results = {c.name: run(instance, data_dir, movie_key(c.name)) for c in CASES}
    amid = _forced(instance, data_dir, "good")
    return Catalogue(data_dir, sensor_keys, results, good_alone, (amid, _rows(data_dir, "good")))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_cleanly(case: Case, catalogue: Catalogue) -> None:
    result, key = catalogue.results[case.name], movie_key(case.name)
    assert key in catalogue.sensor_keys
    rows = _rows(catalogue.data_dir, key)
    if case.problem is None:
        assert result.success, failure_message(result)
        assert rows["movies"] == 1 and rows["shots"] >= 1 and rows["checkpoints"] == 1
        assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == set(PIPELINE_ASSETS)
        assert all(e.passed for e in result.get_asset_check_evaluations())
        return
    assert not result.success
    message = failure_message(result)
    assert "\n" not in message and case.problem in message, message
    if case.name == "vanished.mp4":  # the file is gone: its key and the folder it was in
        assert f"movie '{key}'" in message and str(catalogue.data_dir / "movies") in message, message
    else:
        assert message.startswith(f"{catalogue.data_dir / 'movies' / case.name}: "), message
    assert all(n == 0 for n in rows.values()), rows  # no result rows, no cache_index entry
    lineage = Store(catalogue.data_dir / "vcn.duckdb").read("lineage", key)
    assert set(lineage["status"].to_list()) <= {"failed"}  # at most the record that it failed


def test_good_movie_unaffected_by_its_bad_neighbours(catalogue: Catalogue) -> None:
    (alone, alone_rows), (amid, amid_rows) = catalogue.good_alone, catalogue.good_amid
    assert alone.success and amid.success
    assert "good" not in catalogue.sensor_keys  # already known: the sensor asks only for the new files
    assert amid_rows == alone_rows and alone_rows["tracks"] == 4
    assert _versions(amid) == _versions(alone)  # recomputed, byte-for-byte the same results


def test_unusual_movies_keep_their_true_size_and_frames(catalogue: Catalogue) -> None:
    store = Store(catalogue.data_dir / "vcn.duckdb")
    movie = {k: store.read("movies", k).row(0, named=True) for k in ("vfr", "uhd", "phone")}
    assert (movie["vfr"]["n_frames"], movie["vfr"]["width"], movie["vfr"]["height"]) == (40, 240, 160)
    assert (movie["uhd"]["n_frames"], movie["uhd"]["width"], movie["uhd"]["height"]) == (6, 3840, 2160)
    assert (movie["phone"]["width"], movie["phone"]["height"]) == (160, 240)  # upright: portrait
    assert [store.count("tracks", k) for k in ("vfr", "uhd", "phone", "nofaces")] == [1, 1, 1, 0]
    # the phone's face is drawn at x 61-140, y 20-107 of the upright picture: boxes are upright too
    boxes = store.read("track_boxes", "phone")
    assert boxes["x1"].min() >= 58 and boxes["x2"].max() <= 143 and boxes["y2"].max() <= 110


# --- rotation -------------------------------------------------------------------------------------


def _tkhd_matrix(data: bytes) -> tuple[int, ...]:
    """The first track header's 3x3 display matrix (a, b, u, c, d, v, x, y, w), as ffprobe reads it."""
    at = data.index(b"tkhd") + 4
    offset = 40 if data[at] == 0 else 52  # version 0: 32-bit times, version 1: 64-bit
    return struct.unpack(">9i", data[at + offset : at + offset + 36])


def _astronaut_phone_clip(path: Path) -> np.ndarray:
    """A real face (scikit-image's astronaut) in a portrait picture, stored turned on its side with a
    display matrix "rotate 90 clockwise"; returns the upright picture (640 high, 512 wide)."""
    import cv2
    from skimage import data as skdata

    upright = np.zeros((640, 512, 3), np.uint8)
    upright[:512] = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 512, 640, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        stream.set_display_rotation(-90)
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(upright, 1)), "bgr24")))
        out.mux(stream.encode())
    return upright


def test_rotated_phone_video_decodes_upright_so_faces_are_found(tmp_path: Path) -> None:
    dlib = pytest.importorskip("dlib")
    path = tmp_path / "phone.mp4"
    upright = _astronaut_phone_clip(path)
    a, b, _, c, d, *_ = _tkhd_matrix(path.read_bytes())
    assert (a, b, c, d) == (0, 1 << 16, -(1 << 16), 0)  # the container says: turn 90 degrees clockwise
    info = probe(path)
    assert (info.width, info.height, info.quarter_turns, info.n_frames) == (512, 640, 3, 3)
    frames = [f for _, f in iter_frames(path)]
    assert [f.shape for f in frames] == [(640, 512, 3)] * 3
    assert np.abs(frames[0].astype(np.int16) - upright).mean() < 4  # the upright picture, not a mirror
    detect = dlib.get_frontal_face_detector()
    centres = [r.center() for r in detect(frames[0][..., ::-1].copy(), 0)]
    assert any(180 < c.x < 265 and 85 < c.y < 170 for c in centres), centres  # her face, upright
    assert len(detect(np.rot90(frames[0], 1)[..., ::-1].copy(), 0)) == 0  # as stored: no face at all
    _, small = next(iter_frames(path, width=256))
    assert small.shape == (320, 256, 3)  # downscaled to the upright width


# --- fuzzing the reader ---------------------------------------------------------------------------

_HEAD = 1024  # the base clip's ftyp + moov (faststart): container and codec headers
_INT32 = (0, 1, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)  # box sizes, counts, offsets at their extremes
_where = st.one_of(*[st.integers(0, _HEAD - 1)] * 3, st.integers(0, 1 << 16))  # 3:1 in the headers
_edit = st.one_of(
    st.tuples(st.just("flip"), _where, st.integers(0, 7)),
    st.tuples(st.just("overwrite"), _where, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("int32"), _where, st.sampled_from(_INT32)),
    st.tuples(st.just("insert"), _where, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _where, st.integers(1, 64)),
    st.tuples(st.just("truncate"), _where, st.none()),
)


def _mutate(data: bytes, edits: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op, where, arg in edits:
        at = where % max(len(buf), 1)
        if op == "flip" and buf:
            buf[at] ^= 1 << arg
        elif op == "overwrite":
            buf[at : at + len(arg)] = arg
        elif op == "int32":
            buf[at : at + 4] = arg.to_bytes(4, "big")
        elif op == "insert":
            buf[at:at] = arg
        elif op == "delete":
            del buf[at : at + arg]
        elif op == "truncate":
            del buf[at:]
    return bytes(buf)


@dataclass(frozen=True)
class FuzzBase:
    data: bytes = field(repr=False)  # keeps hypothesis' report of a failing example short
    path: Path  # where each mutated file is written


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> FuzzBase:
    """A 16-frame 64x48 H.264 mp4 with its headers first (``faststart``), and a scratch file path."""
    folder = tmp_path_factory.mktemp("fuzz")
    frames = [_frame(48, 64, (4 + t, 10), (20, 16)) for t in range(16)]
    with av.open(str(folder / "base.mp4"), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")))
        out.mux(stream.encode())
    data = (folder / "base.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat") < _HEAD  # the edits aim at real headers
    return FuzzBase(data, folder / "fuzzed.mp4")


class _Hang(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Hang("the video reader is still busy after 20 s on a 3 kB file")


def _read_capped(path: Path, width: int | None) -> None:
    """What the pipeline does with a movie, bounded: probe it, decode its first 5 frames."""
    probe(path)
    for n, (frame_idx, frame_bgr) in enumerate(iter_frames(path, width=width)):
        assert frame_idx == n and frame_bgr.dtype == np.uint8 and frame_bgr.ndim == 3
        assert frame_bgr.shape[2] == 3 and frame_bgr.flags.c_contiguous
        if n == 4:
            break


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edits=st.lists(_edit, min_size=1, max_size=4), width=st.sampled_from([None, 32]))
def test_fuzzed_files_raise_only_video_error(fuzz_base: FuzzBase, edits: list[tuple], width: int | None) -> None:
    path = fuzz_base.path
    path.write_bytes(_mutate(fuzz_base.data, edits))
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(20)  # a hang guard, not a speed assertion: one example takes milliseconds
    try:
        _read_capped(path, width)
    except VideoError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
