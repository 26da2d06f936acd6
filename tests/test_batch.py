"""`musicguide batch`: one model load, each job as its command alone, failures listed, and the same
split across processes with torchrun (gloo on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from musicguide.cli import running as runner
from conftest import run_cli

FAST = ["--steps", "2", "--context", "2"]
OWN = ["--model", "tiny-random", "--device", "cpu"]




def write_jobs(path: Path, jobs: list[list[str]]) -> Path:
    path.write_text("".join(json.dumps({"args": [str(a) for a in job]}) + "\n" for job in jobs))
    return path


def edit_jobs(song: Path, out: Path) -> list[list[str]]:
    return [
        ["infill", song, "--start", "1", "--end", "2", "--seed", "5", "-o", out / "a.wav", *FAST],
        ["continue", song, "--seconds", "2", "--seed", "6", "-o", out / "b.wav", *FAST],
        ["infill", out / "missing.wav", "--start", "1", "--end", "2", "-o", out / "c.wav", *FAST],
        ["regenerate", song, "--start", "3", "--end", "4", "--seed", "7", "--variations", "2", "-o", out / "d.wav", *FAST],
    ]


@pytest.mark.slow
def test_batch_equals_the_single_commands_and_lists_failures(song_wav, tmp_path, monkeypatch, capsys):
    batch_out, single_out = tmp_path / "batch", tmp_path / "single"
    batch_out.mkdir(), single_out.mkdir()
    loads = []
    real = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    jobs = write_jobs(tmp_path / "jobs.jsonl", edit_jobs(song_wav, batch_out))
    code, stdout, stderr = run_cli(["batch", jobs, *OWN, "--json"], monkeypatch, capsys)
    assert code == 1, stderr
    assert len(loads) == 1  # one model load for every job
    summary = json.loads(stdout)
    assert [j["ok"] for j in summary["jobs"]] == [True, True, False, True]
    assert summary["jobs"][2]["line"] == 3 and "no such file" in summary["jobs"][2]["error"]
    assert len(summary["jobs"][3]["outputs"]) == 2
    for job in edit_jobs(song_wav, single_out):
        run_cli([*job, *OWN, "--quiet"], monkeypatch, capsys)
    for name in ("a.wav", "b.wav", "d_1.wav", "d_2.wav"):
        assert (batch_out / name).read_bytes() == (single_out / name).read_bytes(), name
    assert not (batch_out / "c.wav").exists()


def test_batch_summary_without_json(song_wav, tmp_path, monkeypatch, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", edit_jobs(song_wav, tmp_path)[:1])
    code, stdout, stderr = run_cli(["batch", jobs, *OWN], monkeypatch, capsys)
    assert code == 0, stderr
    assert "1 of 1 jobs done" in stdout


@pytest.mark.parametrize("line, words", [
    ("not json", "line 2: not JSON"),
    ('{"args": "infill"}', "line 2: expected"),
    ('{"args": ["tags", "a.wav"]}', "line 2: 'tags' is not an edit command"),
    ('{"args": ["infill", "a.wav", "--model", "demo"]}', "line 2: --model is the batch's own option"),
    ('{"args": ["infill", "a.wav", "--device=cpu"]}', "line 2: --device is the batch's own option"),
])
def test_a_bad_jobs_file_is_exit_2_naming_the_line_before_any_job(song_wav, tmp_path, monkeypatch, capsys, line, words):
    good = json.dumps({"args": ["infill", str(song_wav), "--start", "1", "--end", "2", "-o", str(tmp_path / "x.wav")]})
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(good + "\n" + line + "\n")
    code, _, stderr = run_cli(["batch", jobs, *OWN], monkeypatch, capsys)
    assert code == 2 and words in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.slow
def test_torchrun_splits_the_jobs_and_matches_one_process(song_wav, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this python")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    for folder, launcher in ((one, [sys.executable, "-m", "musicguide"]),
                             (two, [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "musicguide"])):
        jobs = write_jobs(folder / "jobs.jsonl", edit_jobs(song_wav, folder))
        # torchrun gives each process one thread; a CPU result depends on the thread count (the order
        # of float sums), so the one-process run gets one thread too
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*launcher, "batch", str(jobs), *OWN, "--json"], capture_output=True, text=True,
                              timeout=600, env=env)
        assert done.returncode == 1, done.stderr  # job 3 fails on purpose
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert [j["ok"] for j in summary["jobs"]] == [True, True, False, True]
    for name in ("a.wav", "a.json", "b.wav", "d_1.wav", "d_2.wav"):
        if name.endswith(".json"):
            left, right = json.loads((one / name).read_text()), json.loads((two / name).read_text())
            assert left["output"]["sha256"] == right["output"]["sha256"] and left["seed"] == right["seed"]
        else:
            assert (one / name).read_bytes() == (two / name).read_bytes(), name
