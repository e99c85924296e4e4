"""``vcn bench-length``: per-stage throughput, real-time factor and peak memory against movie length.

Usage::

    vcn bench-length --minutes 1 5 30 --backend fake --json out.json
    vcn bench-length --minutes 1 5 --backend dlib --stages all --repeat 3

Each movie is a generated 720p 25 fps sample (faces from photos an installed package ships) of
one minute, repeated by stream copy to the requested length (so a 30-minute movie costs seconds to
make, and every minute has the same faces and cuts: cost per minute should stay flat). Each
length runs in a fresh spawned process, so its peak RSS (``ru_maxrss``) is that run's alone.
Reported per length (``--repeat N``: median seconds of N runs, largest peak RSS): seconds and
throughput per stage (frames/s for shots, tracks; detector frames/s and faces detected/s; crops/s;
finetuning steps/s and clustering seconds with ``--stages all``), the real-time factor (movie
seconds / processing seconds) and peak RSS, overall and through each phase
(``peak_rss_mb_through``: ``stage1``, ``stages1_3``, ``stages1_4``; RSS peaks only grow, so each
value is the peak up to that phase's end). Frames are streamed: peak memory that does not grow
with the movie's length (beyond the per-track results kept) is what "bounded" means here.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import resource
import statistics
import time
from pathlib import Path

import av

BASE_SPEC = {"n_shots": 33, "width": 1280, "height": 720, "face_height_px": (100, 240), "faces_per_shot": (1, 3)}


def base_movie(cache: Path) -> Path:
    """The one-minute 720p sample (generated once into ``cache``)."""
    from vcn_assets.core.samples import SampleSpec, make_sample_case

    movie = cache / "base_720p" / "movie.mp4"
    if not movie.exists():
        make_sample_case(movie.parent, SampleSpec(**BASE_SPEC))
    return movie


def repeat_movie(src: Path, dst: Path, times: int) -> Path:
    """``src`` played ``times`` times in a row, by copying its packets with shifted timestamps."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        span = None
        for k in range(times):
            inp.seek(0)
            last = 0
            for packet in inp.demux(s_in):
                if packet.dts is None:
                    continue
                if span is not None:
                    packet.pts += k * span
                    packet.dts += k * span
                last = max(last, packet.pts + (packet.duration or 0))
                packet.stream = s_out
                out.mux(packet)
            span = span or last
    return dst


def _measure(movie: str, backend: str, stages: str, out: multiprocessing.Queue, device: str = "auto") -> None:
    """In a fresh process: run the stages, put timings, counts and peak RSS on ``out``."""
    import numpy as np

    from vcn_assets.core.config import ClusterConfig, FinetuneConfig, MatchConfig, ModelConfig
    from vcn_assets.core.identity import ClusterInputs, adapt, cooccurrence, final_clusters
    from vcn_assets.core.pipeline import PipelineConfig, run_stage1
    from vcn_assets.core.tracking import detection_frames
    from vcn_assets.models.registry import build_models

    cfg = PipelineConfig()
    models = build_models(ModelConfig(backend=backend, device=device), cfg.tracks.min_face_px, cfg.tracks.min_score,
                          cfg.tracks.detect_max_side)
    r = run_stage1(Path(movie), cfg, models)
    peaks = {"stage1": _peak_mb()}
    report = {"seconds": {k: round(v, 2) for k, v in r.seconds.items()}, "n_frames": r.info.n_frames,
              "movie_s": r.info.n_frames / r.info.fps, "n_tracks": len(r.tracks.track_id),
              "n_crops": len(r.crops.track_id), "n_boxes": len(r.boxes.track_id),
              "n_detect_frames": len(detection_frames(r.shots, cfg.tracks.detect_stride)),
              "n_detections": int(r.boxes.detected.sum())}
    if stages == "all":
        tids = r.tracks.track_id
        row = {t: i for i, t in enumerate(tids.tolist())}
        crop_row = [row[t] for t in r.crops.track_id.tolist()]
        box_row = [row[t] for t in r.boxes.track_id.tolist()]
        co = cooccurrence(np.asarray(box_row, np.int64), r.boxes.frame_idx, len(tids))
        inputs = ClusterInputs.from_stage1(r.tracks.status, np.asarray(crop_row, np.int64), r.crops.views, co)
        t0 = time.perf_counter()
        ft_cfg = FinetuneConfig(device=device)
        members = adapt(inputs, ft_cfg, MatchConfig())
        peaks["stages1_3"] = _peak_mb()
        t1 = time.perf_counter()
        final = final_clusters(inputs, members, ClusterConfig())
        peaks["stages1_4"] = _peak_mb()
        report["seconds"] |= {"finetune_and_match": round(t1 - t0, 2),
                              "cluster": round(time.perf_counter() - t1, 2)}
        report["finetune_steps"] = ft_cfg.members * ft_cfg.rounds * ft_cfg.steps_per_round
        report["n_clusters"] = int(final.cluster_of_track.max() + 1)
        report["stage2_4_s"] = round(time.perf_counter() - t0, 2)
    report["peak_rss_mb"] = _peak_mb()
    report["peak_rss_mb_through"] = peaks
    out.put(report)


def _peak_mb() -> float:
    """This process's peak RSS so far (so the value read after a stage is the peak up to its end)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rates(r: dict) -> dict:
    s = r["seconds"]
    total = sum(v for k, v in s.items() if k != "probe")
    rates = {"shots_fps": r["n_frames"] / s["shots"], "tracks_fps": r["n_frames"] / s["tracks"],
             "detect_frames_per_s": r["n_detect_frames"] / s["tracks"],
             "detections_per_s": r["n_detections"] / s["tracks"],
             "crops_per_s": r["n_crops"] / s["crops"], "realtime_factor": r["movie_s"] / total,
             "stage1_realtime_factor": r["movie_s"] / (s["shots"] + s["tracks"] + s["crops"])}
    if "finetune_and_match" in s:
        rates["finetune_steps_per_s"] = r["finetune_steps"] / s["finetune_and_match"]
    return {k: round(v, 2) for k, v in rates.items()}


def _run_once(movie: Path, backend: str, stages: str, device: str = "auto") -> dict:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(str(movie), backend, stages, q, device))
    p.start()
    report = _report_of(p, q)
    p.join()
    return report


def _report_of(p: multiprocessing.Process, q: multiprocessing.Queue) -> dict:
    """The measuring process's report; an error (not a hang) when it exits without one."""
    while True:
        try:
            return q.get(timeout=1.0)
        except queue.Empty:
            if p.is_alive():
                continue
        try:  # it exited: anything it put is readable now
            return q.get(timeout=5.0)
        except queue.Empty:
            raise RuntimeError(f"the measuring process exited with status {p.exitcode} before reporting "
                               "(its traceback is above)") from None


def _median_run(runs: list[dict]) -> dict:
    """The first run's counts, the median seconds of each stage, the largest peak RSS."""
    out = dict(runs[0])
    out["seconds"] = {k: round(statistics.median(r["seconds"][k] for r in runs), 2) for k in runs[0]["seconds"]}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["peak_rss_mb_through"] = {k: max(r["peak_rss_mb_through"][k] for r in runs) for k in runs[0]["peak_rss_mb_through"]}
    return out


def run_length_bench(minutes: list[int], backend: str, stages: str, cache: Path, json_out: Path | None,
                     repeat: int = 1, base: Path | None = None, device: str = "auto") -> list[dict]:
    """One report per length (median of ``repeat`` fresh-process runs); ``base``: the movie to
    repeat (default: the generated one-minute 720p sample); ``device``: the face models' and Stage 2's
    (``auto``, ``cpu``, ``cuda``)."""
    cache.mkdir(parents=True, exist_ok=True)
    base = base or base_movie(cache)
    results = []
    for m in minutes:
        movie = cache / f"{base.stem}_x{m}.mp4"
        if not movie.exists():
            repeat_movie(base, movie, m)
        report = {"minutes": m, "backend": backend, "device": device, "repeat": repeat,
                  **_median_run([_run_once(movie, backend, stages, device) for _ in range(repeat)])}
        report["rates"] = _rates(report)
        results.append(report)
        if json_out:
            json_out.write_text(json.dumps(results, indent=2))
    return results


def length_table(results: list[dict]) -> str:
    head = ("| minutes | frames | tracks | crops | shots fps | tracks fps | detector frames/s | faces detected/s | "
            "crops/s | steps/s | cluster s | realtime x | stage 1 x | peak RSS MB (through stage 1 / 1-3 / all) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        q = r["rates"]
        lines.append(f"| {r['minutes']} | {r['n_frames']} | {r['n_tracks']} | {r['n_crops']} | {q['shots_fps']} | "
                     f"{q['tracks_fps']} | {q['detect_frames_per_s']} | {q['detections_per_s']} | "
                     f"{q['crops_per_s']} | {q.get('finetune_steps_per_s', '-')} | {r['seconds'].get('cluster', '-')} | "
                     f"{q['realtime_factor']} | {q['stage1_realtime_factor']} | {_peaks(r)} |")
    return "\n".join(lines)



def _peaks(r: dict) -> str:
    through = r.get("peak_rss_mb_through", {})
    return " / ".join(str(through.get(k, "-")) for k in ("stage1", "stages1_3")) + f" / {r['peak_rss_mb']}"
