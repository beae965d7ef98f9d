"""What a killed run leaves is cleaned by the next run, --overwrite deletes only flan outputs,
pool workers die with their parent, and a torn results line is dropped, not fatal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flan_builder.cli import main
from flan_builder.errors import FlanError
from flan_builder.workdir import ResultsLog
from tests.helpers import (
    FIXTURE_DATA,
    FIXTURE_TEMPLATES,
    SHARED_DATA,
    assert_one_line_error,
    requires_shared_data,
)

FIX = ["--templates-dir", str(FIXTURE_TEMPLATES), "--no-shipped-templates", "--data-dir", str(FIXTURE_DATA)]


def build(capsys, out, *extra):
    code = main(["build", "--heldout", "nli", "--out", str(out), *FIX, *extra])
    return code, capsys.readouterr().err


def test_next_run_removes_leftovers_of_killed_runs_but_not_a_live_one(capsys, tmp_path):
    out = tmp_path / "ds"
    dead = tmp_path / ".ds.tmp-999999999-deadbeef"  # no such process
    old = tmp_path / ".ds.old-0badc0de"
    for folder in (dead, old):
        folder.mkdir()
        (folder / "data.arrow").write_bytes(b"x" * 1000)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".ds.tmp-{sleeper.pid}-cafe0000"  # a run still writing
        live.mkdir()
        other = tmp_path / ".other.tmp-999999999-deadbeef"  # another output's: not ours to touch
        other.mkdir()
        code, err = build(capsys, out)
        assert code == 0, err
        assert not dead.exists() and not old.exists()
        assert live.exists() and other.exists()
        assert (out / "manifest.json").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_overwrite_refuses_to_delete_a_folder_flan_did_not_write(capsys, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work", encoding="utf-8")
    code, err = build(capsys, mine, "--overwrite")
    assert_one_line_error(code, err, "--overwrite refuses to delete", "thesis", "not a flan-builder output")
    assert (mine / "chapter1.tex").read_text(encoding="utf-8") == "years of work"
    # a flan output is replaced, as before
    code, err = build(capsys, tmp_path / "ds")
    assert code == 0, err
    code, err = build(capsys, tmp_path / "ds", "--overwrite")
    assert code == 0, err


def test_output_cannot_be_the_current_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("k", encoding="utf-8")
    for out in (".", ".."):
        code, err = build(capsys, out, "--overwrite")
        assert_one_line_error(code, err, f"--out {out}", "name a new folder")
    assert (tmp_path / "keep.txt").is_file()


def test_torn_last_line_is_dropped_and_cut(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    torn = '{"a": 3, "sc'
    torn = '{"a": 3, "sc'
    path.write_text(json.dumps({"a": 1}) + "\n" + json.dumps({"a": 2}) + "\n" + torn,
                    encoding="utf-8")
    log = ResultsLog(tmp_path)
    assert log.records == [{"a": 1}, {"a": 2}]
    assert "torn last line" in caplog.text
    log.append({"a": 3})
    assert ResultsLog(tmp_path).records == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_damaged_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n', encoding="utf-8")
    with pytest.raises(FlanError, match=r"results.jsonl: line 2 is not JSON"):
        ResultsLog(tmp_path)


@requires_shared_data
@pytest.mark.slow
def test_pool_workers_exit_when_the_build_is_killed(tmp_path):
    psutil = pytest.importorskip("psutil")
    env = {**os.environ, "FLAN_DATA_DIR": str(SHARED_DATA)}
    proc = subprocess.Popen([sys.executable, "-m", "flan_builder.cli", "build", "--heldout", "nli",
                             "--num-proc", "2", "--out", str(tmp_path / "ds")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = [p for p in parent.children(recursive=True)
                   if "resource_tracker" not in " ".join(p.cmdline())]
        time.sleep(0.2)
    assert len(workers) >= 2, "the build finished before its pool started; nothing to test"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} pool worker(s) outlived the killed build"
