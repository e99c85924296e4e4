"""The Dagster UI end to end, against a real ``dagster dev`` server started from this checkout.

One server per module (about 10-20 s to start): a temporary DAGSTER_HOME holding a copy of the
project's dagster.yaml (storage moved into the temp dir), a temporary VCN_DATA_DIR, and a free
loopback port. The tests use it the way the UI does: the GraphQL API lists the assets and their
groups, a run launched like the asset graph's "Materialize" button goes through the run queue to
SUCCESS and fills the DuckDB store, the server listens on loopback only although it was started
without ``-h``, and headless Chromium renders the asset graph with the asset names.

The server's process group is killed at teardown, whatever the tests did.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from vcn_assets.orchestration.automation import PIPELINE_ASSETS
from vcn_assets.orchestration.partitions import MOVIES, movie_key
from vcn_assets.store.db import Store
from vcn_assets_tests.clips import blob_clip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "__repository__"  # the repository name Dagster gives a Definitions object
ALL_ASSETS = {"movie_file", *PIPELINE_ASSETS}
CLIP_NAME = "ui_clip.mp4"
# Keep the launched run quick: few finetuning steps (the fake backend makes Stage 1 instant).
FAST_FINETUNE = {"rounds": 2, "steps_per_round": 20, "warmup_steps": 5, "batch_tracks": 16}
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 300
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    home: Path
    data_dir: Path
    staged_clip: Path  # a generated movie, moved into the movies folder by the run test
    log: Path
    location: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def gql(self, query: str, variables: dict | None = None) -> dict:
        """POST a GraphQL query to the server; the ``data`` of the answer (GraphQL errors raise)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.load(resp)
        if answer.get("errors"):
            raise AssertionError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def repository_selector(self) -> dict:
        return {"repositoryLocationName": self.location, "repositoryName": REPOSITORY}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _instance_yaml(home: Path) -> dict:
    """The project's dagster.yaml with every relative ``base_dir`` (run storage, artefacts, compute
    logs) moved under ``home``: the rest (run queue, no telemetry, no pop-up) stays as shipped."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())

    def relocate(node):
        if isinstance(node, dict):
            return {k: (str(home / v) if k == "base_dir" and not Path(v).is_absolute() else relocate(v))
                    for k, v in node.items()}
        return [relocate(v) for v in node] if isinstance(node, list) else node

    return relocate(config)


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything in its group."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 20
    while _group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_pids(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


WORKSPACE_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } ... on PythonError { message } } }"""


def _wait_until_loaded(server: Server) -> str:
    """Wait until /graphql answers and the code location is loaded; its name."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"`dagster dev` exited with code {server.proc.returncode} before serving:\n{server.log_tail()}")
        try:
            entries = server.gql(WORKSPACE_QUERY)["workspaceOrError"].get("locationEntries") or []
        except (urllib.error.URLError, OSError, AssertionError) as exc:
            last = repr(exc)
        else:
            for entry in entries:
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    pytest.fail(f"code location {entry['name']} failed to load: {loaded['message']}\n"
                                f"{server.log_tail()}")
                if entry["loadStatus"] == "LOADED" and loaded.get("__typename") == "RepositoryLocation":
                    return entry["name"]
            last = f"workspace entries: {entries}"
        time.sleep(1)
    pytest.fail(f"`dagster dev` did not serve a loaded code location on {server.url}/graphql within "
                f"{START_TIMEOUT_S} s ({last}); its output:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``dagster dev -w workspace.yaml -p PORT`` (no ``-h``: the default bind is under test) with a
    temporary instance and data dir; the movies folder starts empty so that the running
    ``new_movies_sensor`` launches nothing on its own."""
    base = tmp_path_factory.mktemp("ui_server")
    home, data_dir = base / "dagster_home", base / "data"
    home.mkdir()
    (data_dir / "movies").mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(_instance_yaml(home), sort_keys=False))
    clip = blob_clip(base / "staging" / CLIP_NAME, [[0, 1], [2], [0]])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "VCN_"))}
    env.update(DAGSTER_HOME=str(home), VCN_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    dagster = Path(sys.executable).with_name("dagster")
    port = _free_port()
    log = base / "dagster_dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(dagster if dagster.exists() else shutil.which("dagster")), "dev", "-w", "workspace.yaml",
             "-p", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    srv = Server(proc, port, home, data_dir, clip, log)
    try:
        srv.location = _wait_until_loaded(srv)
        yield srv
    finally:
        _kill_group(proc)


ASSET_NODES_QUERY = """{ assetNodes { assetKey { path } groupName isPartitioned isObservable
  repository { name location { name } } } }"""


def test_graphql_lists_assets_with_groups(server: Server) -> None:
    from vcn_assets.definitions import defs

    expected = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    nodes = server.gql(ASSET_NODES_QUERY)["assetNodes"]
    served = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(served) == ALL_ASSETS
    assert {k: n["groupName"] for k, n in served.items()} == expected
    assert {n["groupName"] for n in nodes} == {"stage1_faces", "stage2_finetune", "stage3_soft_match", "stage4_clusters"}
    assert all(n["isPartitioned"] for n in nodes)
    assert served["movie_file"]["isObservable"]
    assert {(n["repository"]["name"], n["repository"]["location"]["name"]) for n in nodes} == {
        (REPOSITORY, server.location)}


ADD_PARTITION = """mutation($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on AddDynamicPartitionSuccess { partitionKey } ... on Error { message } } }"""

# The mutation the UI's "Materialize" button sends (its operation is also named LaunchRun).
LAUNCH_RUN = """mutation LaunchRun($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message } } }"""

RUN_QUERY = """query($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { status jobName tags { key value } assetSelection { path } }
  ... on Error { message } } }"""

RUN_EVENTS_QUERY = """query($runId: ID!) { runOrError(runId: $runId) { ... on Run { eventConnection { events {
  __typename ... on MessageEvent { message } ... on ExecutionStepFailureEvent { stepKey error { message } }
  ... on RunFailureEvent { error { message } } } } } } }"""

RUNS_QUERY = """{ runsOrError { ... on Runs { results { runId jobName tags { key value } } } } }"""

MATERIALIZATIONS_QUERY = """query($key: AssetKeyInput!, $partition: String!) { assetOrError(assetKey: $key) {
  ... on Asset { assetMaterializations(partitions: [$partition]) { runId partition } } } }"""


def _failure_text(server: Server, run_id: str) -> str:
    events = server.gql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"]["eventConnection"]["events"]
    lines = [f"{e.get('stepKey') or e['__typename']}: {e['error']['message'].strip()}" for e in events
             if e.get("error")]
    return "\n".join(lines) or "\n".join(e.get("message", "") for e in events[-10:])


def _wait_for_run(server: Server, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run: dict = {}
    while time.monotonic() < deadline:
        run = server.gql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if run["status"] in ("FAILURE", "CANCELED"):
            pytest.fail(f"run {run_id} ended {run['status']}:\n{_failure_text(server, run_id)}")
        if run["status"] == "SUCCESS":
            return run
        time.sleep(1)
    pytest.fail(f"run {run_id} still {run.get('status')} after {RUN_TIMEOUT_S} s (a QUEUED run means the "
                f"daemon did not dequeue it); server output:\n{server.log_tail()}")


def test_launch_run_like_the_materialize_button(server: Server) -> None:
    key = movie_key(CLIP_NAME)
    # Partition first, file second: the running new_movies_sensor only launches runs for files whose key
    # is not yet a partition, so it never starts a run of its own for this movie.
    added = server.gql(ADD_PARTITION, {"repo": server.repository_selector(), "name": MOVIES.name, "key": key})
    assert added["addDynamicPartition"] == {"__typename": "AddDynamicPartitionSuccess", "partitionKey": key}
    os.replace(server.staged_clip, server.data_dir / "movies" / CLIP_NAME)

    params = {
        "selector": {**server.repository_selector(), "pipelineName": "__ASSET_JOB",
                     "assetSelection": [{"path": [a]} for a in PIPELINE_ASSETS]},
        "runConfigData": {"resources": {"vcn": {"config": {"backend": "fake"}}},
                          "ops": {"finetuned_checkpoint": {"config": FAST_FINETUNE}}},
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
    }
    launched = server.gql(LAUNCH_RUN, {"executionParams": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    assert launched["run"]["status"] == "QUEUED"  # dagster.yaml's QueuedRunCoordinator; the daemon dequeues

    run = _wait_for_run(server, run_id)
    assert {"key": "dagster/partition", "value": key} in run["tags"]
    assert {"/".join(a["path"]) for a in run["assetSelection"]} == set(PIPELINE_ASSETS)

    # what the UI shows: a materialisation of each pipeline asset for this partition, from this run
    for asset in PIPELINE_ASSETS:
        mats = server.gql(MATERIALIZATIONS_QUERY, {"key": {"path": [asset]}, "partition": key})["assetOrError"]
        assert [(m["runId"], m["partition"]) for m in mats["assetMaterializations"]] == [(run_id, key)], asset

    # what the run wrote: the DuckDB store of the server's data dir, computed with the fake backend
    store = Store(server.data_dir / "vcn.duckdb")
    counts = {t: store.count(t, key) for t in ("movies", "shots", "tracks", "crops", "clusters", "cluster_summary")}
    assert counts["movies"] == 1 and all(counts.values()), counts
    lineage = store.read("lineage", key)
    models = dict(zip(lineage["asset"].to_list(), lineage["model"].to_list()))
    assert all(json.loads(models[a])["backend"] == "fake" for a in ("tracks", "crops")), models

    # and no other run: the sensor saw the movie as a known partition
    runs = server.gql(RUNS_QUERY)["runsOrError"]["results"]
    assert [r["runId"] for r in runs] == [run_id]


def _listening_tcp(pgid: int) -> set[tuple[str, int]]:
    """(local address, port) of every listening TCP socket held by a process of the group."""
    inodes = set()
    for pid in _group_pids(pgid):
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue
        inodes |= {m.group(1) for link in links if (m := re.fullmatch(r"socket:\[(\d+)\]", link))}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                addr, port = local.split(":")
                found.add((addr, int(port, 16)))
    return found


LOOPBACK = {
    "0100007F",  # 127.0.0.1 (little-endian hex, as /proc/net/tcp writes it)
    "00000000000000000000000001000000",  # ::1
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
}


def test_server_binds_loopback_by_default(server: Server) -> None:
    # The fixture starts `dagster dev -w workspace.yaml -p PORT` without -h: this is the default bind.
    assert "-h" not in server.proc.args and "--host" not in server.proc.args
    sockets = _listening_tcp(server.proc.pid)
    assert server.port in {port for _, port in sockets}, sockets
    assert {addr for addr, _ in sockets} <= LOOPBACK, f"listening beyond loopback: {sockets}"
    assert f"Serving dagster-webserver on http://127.0.0.1:{server.port}" in server.log.read_text(errors="replace")


def _graph_url(server: Server) -> str:
    """The global asset lineage page with every asset group expanded (collapsed groups show only their
    names). Group ids are ``global@global:<group>`` unless the UI's per-code-location flag is on."""
    groups = sorted({n["groupName"] for n in server.gql(ASSET_NODES_QUERY)["assetNodes"]})
    return f"{server.url}/asset-groups?expanded=" + quote(",".join(f"global@global:{g}" for g in groups), safe="")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed: apt-get install chromium")
def test_chromium_renders_asset_graph(server: Server, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    url = _graph_url(server)
    shot = tmp_path / "asset_graph.png"
    # The window size matters: at headless Chromium's default 800x600 the graph panel stays empty.
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--window-size=1400,900", f"--screenshot={shot}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        dom, err = proc.communicate(timeout=120)
    finally:
        _kill_group(proc)
    dom_text = dom.decode(errors="replace")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"

    # Asset nodes carry their names as text; the zoomed-out view shortens long names in the middle.
    shown = {a for a in ALL_ASSETS if f">{a}<" in dom_text}
    if re.search(r">finetu\S*_checkpoint<", dom_text):
        shown.add("finetuned_checkpoint")
    assert {"shots", "tracks", "crops", "clusters"} <= shown, (
        f"{url}: asset names in the DOM: {sorted(shown)}; page text: {re.sub(r'<[^>]+>', ' ', dom_text)[-1500:]}")
    assert shown == ALL_ASSETS, sorted(ALL_ASSETS - shown)

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, len(png)
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (900, 1400) and img.std() > 5, (img.shape, img.std())
