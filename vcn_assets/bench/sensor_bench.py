"""``vcn bench-sensor``: how long the new-movies sensor's tick takes on a large movies folder.

Usage::

    vcn bench-sensor --movies 1000 --repeat 5

Each repeat makes a fresh movies folder of ``movies`` tiny files and a fresh ephemeral Dagster
instance, then times (1) the first tick: the sensor evaluation that finds every file new, plus
adding the partitions as the daemon does with its result, and (2) a second tick that finds nothing
new (the steady state of a large catalogue). Reports the median and max of each over the repeats.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg

from vcn_assets.orchestration.automation import new_movies_sensor
from vcn_assets.orchestration.resources import VcnResource


def tick(instance: dg.DagsterInstance, vcn: VcnResource) -> tuple[float, int]:
    """(seconds, run requests) of one sensor tick, including the partition additions it asks for."""
    t0 = time.perf_counter()
    result = new_movies_sensor(dg.build_sensor_context(instance=instance, resources={"vcn": vcn}))
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return time.perf_counter() - t0, len(result.run_requests or [])


def make_movies(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"movie {i:05d}, take 'one'.mp4").write_bytes(b"\x00" * 64)  # names that need slugs


def run_sensor_bench(movies: int, repeat: int) -> dict:
    logging.getLogger("dagster").setLevel(logging.WARNING)  # the tick's log line is not the point here
    first, steady = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
            vcn = VcnResource(data_dir=tmp)
            make_movies(vcn.movies_path, movies)
            seconds, requested = tick(instance, vcn)
            if requested != movies:
                raise RuntimeError(f"first tick requested {requested} runs for {movies} new movies")
            first.append(seconds)
            seconds, requested = tick(instance, vcn)
            if requested:
                raise RuntimeError(f"second tick requested {requested} runs for no new movie")
            steady.append(seconds)
    return {"movies": movies, "repeat": repeat,
            "first_tick_median_s": statistics.median(first), "first_tick_max_s": max(first),
            "steady_tick_median_s": statistics.median(steady), "steady_tick_max_s": max(steady)}
