"""The `vcn` command's materialisation path, as a user runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vcn_assets.cli import main


def test_vcn_materialize_twice_is_all_hits_and_quiet(data_dir: Path, blob_movie: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture) -> None:
    home = data_dir / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("VCN_DATA_DIR", str(data_dir))
    shutil.copy(blob_movie, data_dir / "movies" / "ep1.mp4")
    main(["materialize", "ep1", "--backend", "fake"])
    first = capfd.readouterr()
    main(["materialize", "ep1", "--backend", "fake"])
    second = capfd.readouterr()
    assert "clusters               cache: miss" in first.out
    assert second.out.count("cache: hit") == 6 and "DEBUG" not in second.err + first.err


_RUN_ONE_ASSET = """
import signal, sys
import dagster as dg
from vcn_assets.cli import _sigterm_kept

@dg.asset
def one() -> int:
    return 1

if sys.argv[1] == "kept":
    with _sigterm_kept():
        dg.materialize([one])
else:
    dg.materialize([one])
print(int(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN))
"""


@pytest.mark.parametrize(("mode", "ignored"), [("kept", 0), ("bare", 1)])
def test_an_in_process_run_leaves_sigterm_alone_under_nohup(mode: str, ignored: int) -> None:
    """Started with SIGINT ignored (``nohup ... &``), a bare in-process Dagster run leaves SIGTERM
    ignored (Dagster copies SIGINT's handler to it); ``vcn materialize``'s guard keeps it."""
    import signal
    import subprocess
    import sys

    def nohup_like() -> None:  # SIGINT ignored; SIGTERM at its default, whatever this suite's process has
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    out = subprocess.run([sys.executable, "-c", _RUN_ONE_ASSET, mode], capture_output=True, text=True, check=True,
                         preexec_fn=nohup_like)
    assert out.stdout.strip().splitlines()[-1] == str(ignored)
