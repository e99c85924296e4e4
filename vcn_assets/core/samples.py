"""A generated sample "episode" with exact ground truth, built from face photos that installed packages ship.

Usage::

    from vcn_assets.core.samples import SampleSpec, make_sample_case
    movie = make_sample_case(tmp_path / "sample", SampleSpec(n_shots=6, seed=1))
    # tmp_path/sample/{movie.mp4, gt_faces.csv, gt_shots.txt, case.json}: the benchmark case format

The faces come from insightface's bundled ``t1.jpg`` (a group photo of six people, named ``person_1`` ..
``person_6`` from left to right), its ``Tom_Hanks_54745.png`` and scikit-image's ``astronaut()`` (Eileen
Collins). They are located with dlib's HOG detector when a case is generated, cut out as a ~2x region around
the face box, and pasted with a feathered elliptical mask on a smooth random per-shot background, with slow
drift and zoom. The GT box of a face is its source face box mapped through the exact per-frame transform.
Everything is deterministic for ``SampleSpec.seed``; randomness flows through one ``numpy`` Generator.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

IDENTITIES = tuple(f"person_{i}" for i in range(1, 7)) + ("tom_hanks", "astronaut")

REGION_SCALE = 2.0  # pasted region size / face box size: enough hair, chin and background for a detector
FEATHER = 0.3  # share of the ellipse radius over which the paste mask fades to zero
ZOOM = 0.1  # largest relative change of a face's scale over one shot
DRIFT = 0.25  # largest drift of a face over one shot, in face heights per axis
ENCODER_CRF = "18"  # x264 quality: visually lossless, so detectors see the faces as rendered


@dataclass(frozen=True)
class SampleSpec:
    """What to generate.

    Attributes:
        n_shots: shots separated by hard cuts; each identity needs two face slots, so
            ``n_shots * faces_per_shot[1] >= 2 * identities``.
        width, height: frame size in pixels (even, for yuv420p).
        fps: frames per second.
        shot_seconds: (min, max) shot duration, uniform.
        faces_per_shot: (min, max) faces in one shot, uniform; more faces = smaller columns per face.
        face_height_px: (min, max) face box height at shot start; capped so the pasted region fits its column.
        seed: seed of the one Generator that drives every random choice.
        identities: how many of the eight source identities to use (the first N, in the order listed above).
    """

    n_shots: int = 12
    width: int = 640
    height: int = 360
    fps: int = 25
    shot_seconds: tuple[float, float] = (1.2, 2.4)
    faces_per_shot: tuple[int, int] = (1, 2)
    face_height_px: tuple[int, int] = (70, 140)
    seed: int = 0
    identities: int = 8

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width < 64 or self.height < 64:
            raise ValueError(
                f"SampleSpec: width/height must be even and >= 64, got {self.width}x{self.height}"
            )
        if not 1 <= self.faces_per_shot[0] <= self.faces_per_shot[1]:
            raise ValueError(f"SampleSpec: faces_per_shot must be 1 <= min <= max, got {self.faces_per_shot}")
        if not 0 < self.shot_seconds[0] <= self.shot_seconds[1]:
            raise ValueError(f"SampleSpec: shot_seconds must be 0 < min <= max, got {self.shot_seconds}")
        if not 0 < self.face_height_px[0] <= self.face_height_px[1]:
            raise ValueError(f"SampleSpec: face_height_px must be 0 < min <= max, got {self.face_height_px}")
        if self.identities < 1:
            raise ValueError(f"SampleSpec: identities must be >= 1, got {self.identities}")
        if self.n_shots < 1 or self.fps < 1:
            raise ValueError(f"SampleSpec: n_shots and fps must be >= 1, got {self.n_shots}, {self.fps}")
        if self.n_shots * min(self.faces_per_shot[1], self.identities) < 2 * self.identities:
            raise ValueError(
                f"SampleSpec: {self.n_shots} shots of <= {self.faces_per_shot[1]} faces cannot show each of "
                f"{self.identities} identities twice"
            )


@dataclass(frozen=True)
class SourceFace:
    """One identity's paste patch.

    ``patch_bgr`` (h, w, 3) uint8, ``alpha`` (h, w) float32 in [0, 1], and ``face_xyxy`` (4,) float64: the
    dlib face box in continuous patch coordinates (x2/y2 exclusive). Arrays are read-only (shared cache).
    """

    identity: str
    patch_bgr: NDArray[np.uint8]
    alpha: NDArray[np.float32]
    face_xyxy: NDArray[np.float64]


@dataclass(frozen=True)
class FacePlacement:
    """A face's linear motion over a shot: scale and face-centre position (continuous frame coordinates)."""

    source: int
    scale: tuple[float, float]
    center: tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class ShotPlan:
    """One shot: first frame, length, the seed of its background and its base hue, and its faces."""

    start: int
    n_frames: int
    background_seed: int
    hue: float
    faces: tuple[FacePlacement, ...]


# ---------------------------------------------------------------- source faces


def _insightface_image(name: str) -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("insightface is not installed: its bundled images are the sample faces")
    path = Path(spec.origin).parent / "data" / "images" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled insightface image missing")
    return path


def read_bgr(path: Path) -> NDArray[np.uint8]:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return img


def detect_faces(img_bgr: NDArray[np.uint8], what: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """dlib HOG (upsample 1) face boxes ``(N, 4)`` (x2/y2 exclusive) and scores ``(N,)``."""
    import dlib

    rects, scores, _ = dlib.get_frontal_face_detector().run(cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB), 1, 0.0)
    if not rects:
        raise ValueError(f"{what}: dlib HOG found no face")
    xyxy = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64)
    return xyxy, np.asarray(scores, np.float64)


def make_patch(img_bgr: NDArray[np.uint8], face_xyxy: NDArray[np.float64], identity: str) -> SourceFace:
    """Cut a REGION_SCALE region around the face; outside the photo, fill with a blurred reflection."""
    w, h = face_xyxy[2] - face_xyxy[0], face_xyxy[3] - face_xyxy[1]
    cx, cy = (face_xyxy[0] + face_xyxy[2]) / 2, (face_xyxy[1] + face_xyxy[3]) / 2
    half_w, half_h = REGION_SCALE * w / 2, REGION_SCALE * h / 2
    pad = int(np.ceil(max(half_w, half_h))) + 2
    padded = cv2.copyMakeBorder(img_bgr, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    blurred = cv2.GaussianBlur(padded, (0, 0), sigmaX=max(w, h) / 8)
    inside = np.zeros(padded.shape[:2], bool)
    inside[pad:-pad, pad:-pad] = True
    padded = np.where(inside[..., None], padded, blurred)
    x0, y0 = int(np.floor(cx - half_w)) + pad, int(np.floor(cy - half_h)) + pad
    x1, y1 = int(np.ceil(cx + half_w)) + pad, int(np.ceil(cy + half_h)) + pad
    patch = np.ascontiguousarray(padded[y0:y1, x0:x1])
    face = face_xyxy + np.array([pad - x0, pad - y0, pad - x0, pad - y0], np.float64)
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32) + 0.5
    fcx, fcy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    r = np.sqrt(((xx - fcx) / half_w) ** 2 + ((yy - fcy) / half_h) ** 2)
    alpha = np.clip((1.0 - r) / FEATHER, 0.0, 1.0).astype(np.float32)
    for arr in (patch, alpha, face):
        arr.setflags(write=False)
    return SourceFace(identity, patch, alpha, face)


@functools.lru_cache(maxsize=1)
def load_source_faces() -> tuple[SourceFace, ...]:
    """Paste patches of the eight sample identities, in the order of ``IDENTITIES``.

    ``person_1..person_6`` are t1.jpg's faces left to right. Cached: the dlib pass over t1.jpg takes ~0.5 s.
    """
    from skimage import data as skdata

    out: list[SourceFace] = []
    t1_path = _insightface_image("t1.jpg")
    t1 = read_bgr(t1_path)
    boxes, _ = detect_faces(t1, str(t1_path))
    if len(boxes) != 6:
        raise ValueError(f"{t1_path}: dlib HOG found {len(boxes)} faces, expected the 6 people of the photo")
    for name, box in zip(IDENTITIES[:6], boxes[np.argsort(boxes[:, 0], kind="stable")]):
        out.append(make_patch(t1, box, name))
    tom_path = _insightface_image("Tom_Hanks_54745.png")
    tom = read_bgr(tom_path)
    boxes, scores = detect_faces(tom, str(tom_path))
    out.append(make_patch(tom, boxes[int(np.argmax(scores))], "tom_hanks"))
    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    boxes, scores = detect_faces(astro, "skimage.data.astronaut()")
    out.append(make_patch(astro, boxes[int(np.argmax(scores))], "astronaut"))
    return tuple(out)


# ---------------------------------------------------------------- planning


def _assign_identities(counts: list[int], n_ids: int, rng: np.random.Generator) -> list[list[int]]:
    """Distinct identities per shot, least-used first (random tie-break): usage stays balanced within one."""
    used = np.zeros(n_ids, np.int64)
    shots = []
    for k in counts:
        order = np.lexsort((rng.random(n_ids), used))
        chosen = [int(i) for i in order[:k]]
        used[chosen] += 1
        rng.shuffle(chosen)
        shots.append(chosen)
    return shots


def _faces_per_shot(spec: SampleSpec, rng: np.random.Generator) -> list[int]:
    hi = min(spec.faces_per_shot[1], spec.identities)
    lo = min(spec.faces_per_shot[0], hi)
    counts = [int(c) for c in rng.integers(lo, hi + 1, size=spec.n_shots)]
    while sum(counts) < 2 * spec.identities:  # every identity appears in >= 2 shots
        open_shots = [i for i, c in enumerate(counts) if c < hi]
        counts[open_shots[int(rng.integers(len(open_shots)))]] += 1
    return counts


def _place_face(
    src: SourceFace, source: int, column: tuple[float, float], spec: SampleSpec, rng: np.random.Generator
) -> FacePlacement:
    """Pick start/end scale and face centre so the whole pasted region stays inside its column and frame."""
    ph, pw = src.alpha.shape
    face = src.face_xyxy
    fcx, fcy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    s0 = rng.uniform(*spec.face_height_px) / (face[3] - face[1])
    s1 = s0 * (1.0 + rng.uniform(-ZOOM, ZOOM))
    fit = min((column[1] - column[0]) / pw, spec.height / ph) * 0.98
    s_max = max(s0, s1)
    if s_max > fit:
        s0, s1 = s0 * fit / s_max, s1 * fit / s_max
        s_max = fit
    lo = np.array([column[0] + s_max * fcx, s_max * fcy])
    hi = np.array([column[1] - s_max * (pw - fcx), spec.height - s_max * (ph - fcy)])
    c0 = rng.uniform(lo, hi)
    drift = rng.uniform(-DRIFT, DRIFT, size=2) * s0 * (face[3] - face[1])
    c1 = np.clip(c0 + drift, lo, hi)
    return FacePlacement(source, (float(s0), float(s1)), ((c0[0], c0[1]), (c1[0], c1[1])))


def plan_shots(spec: SampleSpec, sources: tuple[SourceFace, ...], rng: np.random.Generator,
               pick: Callable[[int], int] | None = None) -> list[ShotPlan]:
    """Shot lengths, backgrounds and face motions for the whole episode. ``pick(identity)`` gives the
    source (photo) index of each appearance of identity ``0..spec.identities-1``; default: the same."""
    counts = _faces_per_shot(spec, rng)
    shots, start, hue = [], 0, float(rng.uniform(0, 180))
    for ids in _assign_identities(counts, spec.identities, rng):
        n = max(2, round(rng.uniform(*spec.shot_seconds) * spec.fps))
        col_w = spec.width / len(ids)
        chosen = [pick(i) if pick else i for i in ids]
        faces = tuple(
            _place_face(sources[s], s, (j * col_w, (j + 1) * col_w), spec, rng) for j, s in enumerate(chosen)
        )
        shots.append(ShotPlan(start, n, int(rng.integers(2**32)), hue, faces))
        hue = (hue + rng.uniform(40, 140)) % 180  # OpenCV hue units: consecutive shots look clearly different
        start += n
    return shots


# ---------------------------------------------------------------- rendering


def _background(width: int, height: int, hue: float, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Smooth random colour field around ``hue`` with a gradient and a faint static grain."""
    grid = np.empty((4, 6, 3), np.float32)
    grid[..., 0] = (hue + rng.normal(0, 8, (4, 6))) % 180
    grid[..., 1] = rng.uniform(60, 200, (4, 6))
    grid[..., 2] = rng.uniform(70, 230, (4, 6))
    small = cv2.cvtColor(grid.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    field = field * (0.8 + 0.3 * ramp) + rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)


def _face_transform(place: FacePlacement, src: SourceFace, u: float) -> tuple[float, float, float]:
    """Scale and offset (x, y) mapping continuous patch coordinates to frame coordinates at shot time u."""
    s = (1 - u) * place.scale[0] + u * place.scale[1]
    cx = (1 - u) * place.center[0][0] + u * place.center[1][0]
    cy = (1 - u) * place.center[0][1] + u * place.center[1][1]
    f = src.face_xyxy
    return s, cx - s * (f[0] + f[2]) / 2, cy - s * (f[1] + f[3]) / 2


def _paste(frame: NDArray[np.uint8], src: SourceFace, s: float, bx: float, by: float) -> None:
    """Alpha-blend the scaled patch into ``frame`` in place, warping only the covered region."""
    h, w = frame.shape[:2]
    ph, pw = src.alpha.shape
    x0, y0 = max(0, int(np.floor(bx))), max(0, int(np.floor(by)))
    x1, y1 = min(w, int(np.ceil(bx + s * pw)) + 1), min(h, int(np.ceil(by + s * ph)) + 1)
    # Continuous x' = s*x + b is index i' = s*i + b + 0.5*s - 0.5 (pixel centres at +0.5).
    m = np.array([[s, 0, bx + 0.5 * s - 0.5 - x0], [0, s, by + 0.5 * s - 0.5 - y0]], np.float64)
    size = (x1 - x0, y1 - y0)
    rgb = cv2.warpAffine(src.patch_bgr, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(src.alpha, m, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(roi * (1 - a) + rgb.astype(np.float32) * a + 0.5, 0, 255).astype(np.uint8)


def render_shot(
    shot: ShotPlan, sources: tuple[SourceFace, ...], width: int, height: int
) -> Iterator[tuple[NDArray[np.uint8], list[tuple[int, NDArray[np.float64], str]]]]:
    """Yield ``(frame_bgr, [(frame_idx, xyxy, identity), ...])`` for every frame of one shot."""
    background = _background(width, height, shot.hue, np.random.default_rng(shot.background_seed))
    for t in range(shot.n_frames):
        u = t / (shot.n_frames - 1)
        frame = background.copy()
        rows = []
        for place in shot.faces:
            src = sources[place.source]
            s, bx, by = _face_transform(place, src, u)
            _paste(frame, src, s, bx, by)
            rows.append((shot.start + t, s * src.face_xyxy + np.array([bx, by, bx, by]), src.identity))
        yield frame, rows


# ---------------------------------------------------------------- writing


@functools.cache
def _video_codec() -> str:
    """libx264 when this PyAV build has it; else MPEG-4 Part 2, warned once per process."""
    if "libx264" in av.codecs_available:
        return "libx264"
    logger.warning("PyAV has no libx264 encoder: writing MPEG-4 Part 2 ('mpeg4') instead of H.264")
    return "mpeg4"


def write_video(path: Path, frames: Iterable[NDArray[np.uint8]], width: int, height: int, fps: int) -> int:
    """Encode BGR frames to ``path`` (H.264 yuv420p through PyAV); returns the number of frames written."""
    codec = _video_codec()
    n = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            stream.options = {"crf": ENCODER_CRF, "preset": "veryfast"}
        for frame_bgr in frames:
            if frame_bgr.shape != (height, width, 3):
                raise ValueError(
                    f"{path}: frame {n} has shape {frame_bgr.shape}, expected {(height, width, 3)}"
                )
            vf = av.VideoFrame.from_ndarray(frame_bgr, format="bgr24")
            vf.pts, vf.time_base = n, Fraction(1, fps)
            container.mux(stream.encode(vf))
            n += 1
        container.mux(stream.encode())
    return n


def _write_case_files(
    out_dir: Path, spec: SampleSpec, shots: list[ShotPlan], rows: list[tuple[int, NDArray[np.float64], str]],
    meta: dict | None = None,
) -> None:
    """gt_faces.csv, gt_shots.txt and case.json (``meta``, default: the bundled sample's)."""
    with open(out_dir / "gt_faces.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "x1", "y1", "x2", "y2", "identity"])
        for frame_idx, xyxy, identity in rows:
            writer.writerow([frame_idx, *(f"{v:.1f}" for v in xyxy), identity])
    (out_dir / "gt_shots.txt").write_text("".join(f"{s.start}\n" for s in shots[1:]))
    meta = meta or _sample_meta(out_dir, spec, shots)
    (out_dir / "case.json").write_text(json.dumps(meta, indent=2) + "\n")


def _sample_meta(out_dir: Path, spec: SampleSpec, shots: list[ShotPlan]) -> dict:
    sources = load_source_faces()
    return {
        "name": out_dir.name,
        "source": "vcn_assets.core.samples: insightface data/images t1.jpg (person_1..6, left to right), "
        "Tom_Hanks_54745.png (tom_hanks), skimage.data.astronaut() (astronaut)",
        "n_frames": sum(s.n_frames for s in shots),
        "width": spec.width,
        "height": spec.height,
        "fps": spec.fps,
        "identities": sorted(sources[i].identity for i in range(spec.identities)),
        "notes": f"Generated by make_sample_case with SampleSpec {json.dumps(asdict(spec))}, codec "
        f"{_video_codec()}. Faces are ~2x regions around dlib HOG (upsample 1) boxes, pasted with a "
        "feathered elliptical mask on a smooth per-shot background with slow drift and zoom; GT box = the "
        "transformed source face box, exact on every frame; one GT track per appearance.",
    }


def make_sample_case(out_dir: Path, spec: SampleSpec = SampleSpec()) -> Path:
    """Write a full benchmark case (movie.mp4, gt_faces.csv, gt_shots.txt, case.json) into ``out_dir``.

    Returns the path of ``movie.mp4``. The same ``spec`` (seed included) gives the same GT and frames.
    """
    if spec.identities > len(IDENTITIES):
        raise ValueError(f"SampleSpec: identities must be <= {len(IDENTITIES)} (the bundled faces), got {spec.identities}")
    sources = load_source_faces()
    shots = plan_shots(spec, sources, np.random.default_rng(spec.seed))
    return render_case(Path(out_dir), spec, sources, shots)


def render_case(out_dir: Path, spec: SampleSpec, sources: tuple[SourceFace, ...], shots: list[ShotPlan],
                meta: dict | None = None) -> Path:
    """Render planned ``shots`` into ``out_dir``'s movie.mp4 and write its GT files; returns the movie."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[int, NDArray[np.float64], str]] = []

    def frames() -> Iterator[NDArray[np.uint8]]:
        for shot in shots:
            for frame, frame_rows in render_shot(shot, sources, spec.width, spec.height):
                rows.extend(frame_rows)
                yield frame

    movie = out_dir / "movie.mp4"
    n = write_video(movie, frames(), spec.width, spec.height, spec.fps)
    _write_case_files(out_dir, spec, shots, rows, meta)
    logger.info("sample case %s: %d frames, %d shots, %d GT boxes", out_dir, n, len(shots), len(rows))
    return movie


def make_blank_movie(
    path: Path, n_frames: int, width: int, height: int, fps: int, *, seed: int = 0
) -> Path:
    """A valid video without faces: two noisy textured backgrounds with a hard cut at ``n_frames // 2``."""
    if n_frames < 1:
        raise ValueError(f"{path}: n_frames must be >= 1, got {n_frames}")
    if width % 2 or height % 2:
        raise ValueError(f"{path}: width/height must be even for yuv420p, got {width}x{height}")
    rng = np.random.default_rng(seed)
    backgrounds = [_background(width, height, hue, rng) for hue in (20.0, 110.0)]

    def frames() -> Iterator[NDArray[np.uint8]]:
        for i in range(n_frames):
            base = backgrounds[int(i >= n_frames // 2)].astype(np.int16)
            noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
            yield np.clip(base + noise, 0, 255).astype(np.uint8)

    path = Path(path)
    write_video(path, frames(), width, height, fps)
    return path
