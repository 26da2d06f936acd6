"""`musicguide evaluate`: the metrics against closed forms, the baselines against what they promise,
and one small end-to-end run on tiny-random whose report is checked for shape and sanity."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from typer.testing import CliRunner

from musicguide import evaluate as ev
from musicguide.cli import app
from musicguide.cli.evaluation import run_evaluate
from musicguide.errors import UserError

from conftest import synth_song

SR = 44100
REPO = Path(__file__).resolve().parents[1]
HOLDOUT = ["knolls", "battle", "elvish-theme", "loyalists", "traveling_minstrels", "underground"]
# Short enough for the tiny model on two CPU cores, long enough for musicnn (3 s patches) and for
# seam statistics (2048-sample windows).
SMALL = ev.Protocol(clip_seconds=3.0, gap_seconds=0.3, continuation_context_seconds=2.7, transition_overlap_seconds=0.3,
                    clips_per_file=2, context_seconds=0.1)


def _song(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(synth_song(seconds, SR, seed).T.copy())


# ---- MR ----------------------------------------------------------------------------------------


def test_mel_distance_is_zero_for_identical_audio_and_symmetric():
    a, b = _song(1.0, 0), _song(1.0, 1)
    assert ev.mel_distance(a, a.clone(), SR) == 0.0
    assert ev.mel_distance(a, b, SR) == pytest.approx(ev.mel_distance(b, a, SR), rel=1e-6)
    assert ev.mel_distance(a, b, SR) > 0.5


def test_mel_distance_grows_with_added_noise():
    clean = _song(1.0, 2)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    distances = [ev.mel_distance(clean, clean + level * noise, SR) for level in (1e-3, 1e-2, 1e-1)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_mel_filterbank_puts_a_tone_in_the_bands_around_its_frequency():
    # [bands, bins] as `@ spectrum` needs it; higher tones land in higher bands, and the band a
    # tone lights up most is one whose triangle covers the tone's FFT bin.
    n_fft, bands = 2048, 40
    weights = ev.mel_filterbank(SR, n_fft, bands)
    assert weights.shape == (bands, n_fft // 2 + 1) and weights.min() >= 0
    t = torch.arange(n_fft) / SR
    peaks = []
    for hz in (200.0, 1000.0, 5000.0, 15000.0):
        spectrum = torch.fft.rfft(torch.hann_window(n_fft) * torch.sin(2 * math.pi * hz * t)).abs()
        band = int((weights @ spectrum).argmax())
        assert weights[band, round(hz * n_fft / SR)] > 0, hz
        peaks.append(band)
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)


def test_mel_distance_rejects_mismatched_or_too_short_audio():
    with pytest.raises(ValueError, match="equal shapes"):
        ev.mel_distance(torch.zeros(2, 4096), torch.zeros(2, 4095), SR)
    with pytest.raises(ValueError, match="more than"):
        ev.mel_distance(torch.zeros(2, 512), torch.zeros(2, 512), SR)


# ---- FD ----------------------------------------------------------------------------------------


def _psd_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix with rounding noise removed: eigenvalues below
    numpy's matrix_rank tolerance are zero (else ~1e-13 "eigenvalues" become ~3e-7 square roots)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    tolerance = max(values.max(initial=0.0), 0.0) * len(values) * np.finfo(values.dtype).eps
    return np.where(values > tolerance, values, 0.0), vectors


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The reference `embedding_fd` is checked against: |mu1 − mu2|² + tr(S1 + S2 − 2 (S1 S2)^½)
    between two Gaussians given by their parameters. tr (S1 S2)^½ is taken as tr (S1^½ S2 S1^½)^½,
    a symmetric PSD matrix with the same eigenvalues, so `eigh` gets it right even when both
    covariances are singular."""
    values, vectors = _psd_eigh(cov1)
    root = (vectors * np.sqrt(values)) @ vectors.T
    trace_root = np.sqrt(_psd_eigh(root @ cov2 @ root)[0]).sum()
    return max(float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_root), 0.0)


def _rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    # Same eigenvectors: FD = |Δμ|² + Σ (√a_i − √b_i)².
    q = _rotation(0.7)
    a, b = np.array([4.0, 1.0]), np.array([1.0, 9.0])
    mu1, mu2 = np.array([1.0, 2.0]), np.array([-1.0, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_the_closed_form_for_non_commuting_and_singular_covariances():
    # For 2×2 matrices, tr (S1 S2)^½ = √(tr S1S2 + 2 √det S1S2) (the eigenvalues are real, >= 0).
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    r = _rotation(0.4)
    for s2 in (r @ np.diag([3.0, 0.2]) @ r.T, r @ np.diag([3.0, 0.0]) @ r.T):  # the second is singular
        product = s1 @ s2
        trace_root = math.sqrt(np.trace(product) + 2 * math.sqrt(max(np.linalg.det(product), 0.0)))
        expected = 9.0 + np.trace(s1) + np.trace(s2) - 2 * trace_root
        got = frechet_distance(np.zeros(2), s1, np.array([3.0, 0.0]), s2)
        assert got == pytest.approx(expected, rel=1e-9)


def test_embedding_fd_of_samples_approaches_the_gaussians_fd():
    rng = np.random.default_rng(0)
    cov1, cov2 = np.diag([1.0, 4.0, 0.25]), np.diag([2.0, 1.0, 1.0])
    x = rng.multivariate_normal([0, 0, 0], cov1, size=40000)
    y = rng.multivariate_normal([1, 0, 0], cov2, size=40000)
    exact = frechet_distance(np.zeros(3), cov1, np.array([1.0, 0, 0]), cov2)
    assert ev.embedding_fd(x, y) == pytest.approx(exact, rel=0.03)


def test_embedding_fd_equals_the_fd_of_the_sample_gaussians_with_few_and_many_samples():
    rng = np.random.default_rng(2)
    for n, m, dim in ((6, 9, 50), (300, 200, 4)):  # rank-deficient covariances, then full-rank ones
        x, y = rng.standard_normal((n, dim)), 0.5 + 2 * rng.standard_normal((m, dim)) @ rng.standard_normal((dim, dim))
        stats = lambda s: (s.mean(0), np.cov(s, rowvar=False))  # noqa: E731
        assert ev.embedding_fd(x, y) == pytest.approx(frechet_distance(*stats(x), *stats(y)), rel=1e-7)


def test_embedding_fd_of_a_small_set_against_itself_is_zero_despite_rank_deficiency():
    x = np.random.default_rng(1).standard_normal((5, 200)) * 3
    assert ev.embedding_fd(x, x) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(x, rowvar=False)))
    assert ev.embedding_fd(x, x + 1.0) == pytest.approx(200.0, rel=1e-6)  # a shift of 1 in each dimension
    with pytest.raises(ValueError, match="at least 2"):
        ev.embedding_fd(x[:1], x)


# ---- clips and track lists ---------------------------------------------------------------------


def test_clip_starts_are_evenly_spread_inside_the_file_and_do_not_overlap():
    starts = ev.clip_starts(length=20 * SR, clip=6 * SR, count=4)
    assert len(starts) == 3  # only three 6 s clips fit in 20 s
    assert starts == sorted(starts) and starts[0] >= 0 and starts[-1] + 6 * SR <= 20 * SR
    assert all(b - a >= 6 * SR for a, b in zip(starts, starts[1:]))
    assert ev.clip_starts(length=5 * SR, clip=6 * SR, count=4) == []


def test_cut_clips_takes_files_in_turn_and_skips_near_silent_clips(tmp_path):
    music = synth_song(6.0, SR, 3)
    quiet = np.concatenate([music[: 3 * SR], np.zeros((3 * SR, 2), np.float32)])  # second clip silent
    sf.write(tmp_path / "a.wav", quiet, SR, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", synth_song(6.0, SR, 4), SR, subtype="FLOAT")
    sf.write(tmp_path / "c.wav", synth_song(2.0, SR, 5), SR, subtype="FLOAT")  # shorter than a clip
    files = ev.audio_files(tmp_path)
    clips, skipped = ev.cut_clips(files, SMALL, SR, 2, n_clips=10)
    assert [(c.file, c.start) for c in clips] == [("a.wav", 0), ("b.wav", 0), ("b.wav", 3 * SR)]
    assert {(s["file"], s["reason"]) for s in skipped} == {("a.wav", "near-silent"), ("c.wav", "shorter than 3 s")}
    assert len(ev.cut_clips(files, SMALL, SR, 2, n_clips=2)[0]) == 2
    assert ev.transition_pairs(clips) == [(0, 1), (1, 0), (2, 0)]


def test_track_list_selects_whole_track_names_only(tmp_path):
    for name in ("battle.ogg", "battle-epic.ogg", "knolls_100s.ogg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    listed = tmp_path / "list.txt"
    listed.write_text("# held out\nbattle\n\nknolls  # a comment\n")
    names = ev.read_track_list(listed)
    assert names == ["battle", "knolls"]
    assert [p.name for p in ev.audio_files(tmp_path, names)] == ["battle.ogg", "knolls_100s.ogg"]
    with pytest.raises(UserError, match="no audio files of the listed tracks"):
        ev.audio_files(tmp_path, ["underground"])


def test_the_holdout_keeps_the_six_tracks_and_one_of_every_corpus_package():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_corpus", REPO / "scripts" / "build_corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = corpus  # dataclasses look their module up there
    spec.loader.exec_module(corpus)
    names = ev.read_track_list(REPO / "eval" / "holdout.txt")
    assert set(HOLDOUT) <= set(names)
    for package in corpus.PACKAGES:  # wesnoth's tracks keep their own names: the six above
        prefix = corpus.corpus_name(package, "")
        assert any(name.startswith(prefix) for name in names) if prefix else set(HOLDOUT) <= set(names), package


# ---- baselines ---------------------------------------------------------------------------------


def _cases(seconds: float = 3.0, seeds=(0, 1)) -> dict[str, list[ev.Case]]:
    clips = [ev.Clip(f"s{seed}.wav", 0, _song(seconds, seed)) for seed in seeds]
    return ev.build_cases(clips, SMALL, SR)


def test_baselines_fill_the_region_as_described_and_leave_the_rest_alone():
    fade = 1323
    case = _cases()["infill"][0]
    gap, song = case.end - case.start, case.song
    outside = lambda x: torch.cat([x[:, : case.start - fade], x[:, case.end + fade :]], dim=1)  # noqa: E731
    for name, fill in ev.BASELINES.items():
        if "infill" in fill:
            out = fill["infill"](case, fade)
            assert out.audio.shape == song.shape, name
            assert torch.equal(outside(out.audio), outside(song)), name
            assert len(out.seams) == 2, name
    silence = ev.silence_fill(case, fade).audio[:, case.start : case.end]
    assert torch.count_nonzero(silence) == 0
    copied = ev.copy_fill(case, fade).audio[:, case.start : case.end]
    assert torch.equal(copied, song[:, case.start - gap : case.start])
    faded = ev.linear_crossfade_fill(case, fade).audio[:, case.start : case.end]
    assert torch.allclose(faded[:, 0], song[:, case.start - gap], atol=1e-2 * song.abs().max())
    assert torch.allclose(faded[:, -1], song[:, case.end - 1 + gap], atol=1e-2 * song.abs().max())


def test_continuation_and_transition_baselines():
    cases = _cases()
    cont = cases["continuation"][0]
    looped = ev.loop_fill(cont, 1323).audio
    assert looped.shape[-1] == cont.length
    assert torch.equal(looped[:, cont.start : cont.start + 100], cont.song[:, :100])  # the loop restarts
    assert torch.equal(looped[:, : cont.start], cont.song)
    transition = cases["transition"][0]
    assert torch.equal(ev.plain_crossfade(transition, 1323).audio, transition.song)
    assert transition.excerpt[1] - transition.excerpt[0] == cases["infill"][0].length


def test_silence_is_further_from_real_music_than_copying_the_neighbouring_audio(shared_audio):
    files = sorted(shared_audio.glob("*.ogg"))[:3]
    clips, _ = ev.cut_clips(files, ev.Protocol(clips_per_file=1), SR, 2, n_clips=3)
    assert len(clips) == 3
    fade = 1323
    for case in ev.build_cases(clips, ev.Protocol(), SR)["infill"]:
        region = lambda out: out.audio[:, case.start : case.end]  # noqa: E731
        truth = case.original[:, case.start : case.end]
        silence = ev.mel_distance(region(ev.silence_fill(case, fade)), truth, SR)
        copy = ev.mel_distance(region(ev.copy_fill(case, fade)), truth, SR)
        assert silence > copy + 1.0, case.label


# ---- verdicts ----------------------------------------------------------------------------------


def _scores(mr: float, spectral: float, fd: float, spread: float = 0.01) -> ev.Scores:
    per_case = {"mr": [mr - spread, mr + spread], "spectral_distance_db": [spectral] * 2}
    return ev.Scores(n=2, mr=mr, level_jump_db=None, spectral_distance_db=spectral, flagged=None, seams=4, fd=fd,
                     per_case=per_case)


def test_verdict_names_exactly_the_baselines_and_metrics_that_beat_guided_sampling():
    rows = {"guided": {"infill": _scores(2.0, 5.0, 1.0)}, "silence": {"infill": _scores(9.0, 20.0, 8.0)},
            "copy neighbour": {"infill": _scores(1.5, 6.0, 1.0)}}
    sentence = ev.verdict("infill", rows, "guided", ["silence", "copy neighbour", "loop context"])
    assert "does not beat copy neighbour on MR (2 vs 1.5), FD (1 vs 1)" in sentence
    assert "silence on" not in sentence and "spectral" not in sentence
    # Beaten on MR by 0.05 while the per-clip differences scatter by ±0.5: within the noise.
    rows["copy neighbour"]["infill"] = _scores(2.05, 6.0, 1.1, spread=0.5)
    sentence = ev.verdict("infill", rows, "guided", ["silence", "copy neighbour"])
    assert sentence.startswith("Infill: guided beats every baseline on every metric.")
    assert "It beats copy neighbour on MR (2 vs 2.05) by less than two standard errors" in sentence


# ---- one small end-to-end run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """evaluate on two generated songs, tiny-random, 2 steps: the report, its files and the progress."""
    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "one.wav", synth_song(6.5, SR, 11), SR, subtype="PCM_16")
    sf.write(folder / "two.flac", 0.5 * synth_song(6.5, SR, 12)[:, ::-1], SR, subtype="PCM_16")
    out = folder / "report.md"
    calls = []
    threads = torch.get_num_threads()
    # The tiny model's small convolutions gain nothing from a second thread and, on a shared
    # two-core machine, lose several times over to contention.
    torch.set_num_threads(1)
    try:
        report = run_evaluate(folder, "tiny-random", out, steps=2, n_clips=2, seed=3, device="cpu", quiet=False,
                                 protocol=SMALL, progress=lambda *a: calls.append(a))
    finally:
        torch.set_num_threads(threads)
    return report, out, calls


def _expected_rows() -> dict[str, set[str]]:
    rows = {name: set(fills) for name, fills in ev.BASELINES.items()}
    rows.update({name: set(ev.TASKS) for name in ev.MODEL_VARIANTS})
    rows.update({ev.ROUND_TRIP: set(ev.TASKS[:3]), ev.ORIGINAL: set(ev.TASKS[:3])})
    return rows


@pytest.mark.slow
def test_report_has_every_row_and_task_with_finite_numbers(run):
    report, _, calls = run
    assert {name: set(tasks) for name, tasks in report.rows.items()} == _expected_rows()
    for name, tasks in report.rows.items():
        for task, scores in tasks.items():
            assert scores.n == 2, (name, task)
            present = ["fd"] + (["mr"] if task != "transition" else []) + (
                ["level_jump_db", "spectral_distance_db", "flagged"] if name != ev.ROUND_TRIP else [])
            for metric in present:
                value = getattr(scores, metric)
                assert value is not None and math.isfinite(value) and value >= 0, (name, task, metric)
    assert calls[-1][0] == calls[-1][1] == len(calls)  # progress counts up to its total
    assert report.steps == 2 and report.seed == 3 and len(report.clips) == 2
    assert {c["file"] for c in report.clips} == {"one.wav", "two.flac"}


@pytest.mark.slow
def test_sanity_checks_hold(run):
    report, _, _ = run
    for task in ev.TASKS[:3]:
        original = report.rows[ev.ORIGINAL][task]
        assert original.mr == 0.0 and original.fd == pytest.approx(0.0, abs=1e-6)
        assert report.rows[ev.ROUND_TRIP][task].mr > 1.0  # tiny-random's VAE is untrained
        assert report.rows["silence"][task].mr > report.rows[ev.ORIGINAL][task].mr
        assert report.rows["silence"][task].flagged == 1.0  # dropping to silence is always a jump
        assert original.flagged < 1.0
    assert report.rows["silence"]["infill"].mr > report.rows["copy neighbour"]["infill"].mr


def _parse_table(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    all_lines = markdown.splitlines()
    first = next(i for i, line in enumerate(all_lines) if line.startswith("|"))
    lines = []  # the first table only (the paired differences follow it)
    for line in all_lines[first:]:
        if not line.startswith("|"):
            break
        lines.append(line)
    split = lambda line: [cell.strip() for cell in line.strip("|").split("|")]  # noqa: E731
    header, separator, body = split(lines[0]), split(lines[1]), [split(line) for line in lines[2:]]
    assert all(re.fullmatch(r"-+", cell) for cell in separator) and len(separator) == len(header)
    assert all(len(row) == len(header) for row in body)
    return header, {row[0]: row[1:] for row in body}


@pytest.mark.slow
def test_markdown_table_parses_and_matches_the_numbers(run):
    report, out, _ = run
    text = out.read_text()
    header, rows = _parse_table(text)
    assert header[0] == "method" and len(header) == 1 + 4 * 6 - 2  # transitions have no MR, no level error
    assert list(rows) == list(report.rows)
    metric_of = {label: metric for metric, label in ev.METRIC_NAMES.items()}
    for name, cells in rows.items():
        for column, cell in zip(header[1:], cells):
            task, label = column.split(" ", 1)
            scores = report.rows[name].get(task)
            value = None if scores is None else getattr(scores, metric_of[label])
            assert (cell == "–") == (value is None), (name, column, cell)
            assert cell == "–" or re.fullmatch(r"\d+(\.\d+)?(e[+-]\d+)?%?", cell), (name, column, cell)
    assert rows["silence"][header.index("infill MR") - 1] == f"{report.rows['silence']['infill'].mr:.2f}"
    assert "musicnn" in text and "not VGGish" in text
    for task in ev.TASKS:
        assert report.verdicts[task] in text


@pytest.mark.slow
def test_json_round_trips_with_every_number_and_the_settings(run):
    report, out, _ = run
    data = json.loads(out.with_suffix(".json").read_text())
    rows = {row: {task: ev.Scores(**s) for task, s in tasks.items()} for row, tasks in data["rows"].items()}
    assert ev.EvalReport(**{**data, "rows": rows}).to_dict() == report.to_dict()
    assert data["model"]["name"] == "tiny-random" and data["seed"] == 3
    assert data["variants"]["guided DDIM, waveform loss"]["loss_space"] == "audio"
    assert data["variants"]["replacement only"]["guidance"] == 0.0
    assert data["protocol"]["gap_seconds"] == SMALL.gap_seconds
    assert len(data["rows"]["silence"]["infill"]["per_case"]["mr"]) == 2
    assert data["cases"]["transition"][0].startswith("one.wav@") or data["cases"]["transition"][0].startswith("two.flac@")


# ---- command line ------------------------------------------------------------------------------


def test_evaluate_command_refuses_bad_input_before_loading_anything(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "missing"), "--out", str(tmp_path / "r.md"), "--model", "tiny-random"])
    assert isinstance(result.exception, UserError) and "no such folder" in str(result.exception)
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--out", str(tmp_path / "r.txt")])
    assert isinstance(result.exception, UserError) and ".md" in str(result.exception)
    (tmp_path / "r.json").write_text("{}")
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--out", str(tmp_path / "r.md"), "--model", "tiny-random"])
    assert isinstance(result.exception, UserError) and "--overwrite" in str(result.exception)
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--out", str(tmp_path / "s.md"), "--clips", "1"])
    assert isinstance(result.exception, UserError) and "--clips" in str(result.exception)
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--out", str(tmp_path / "s.md"), "--variant", "nope"])
    assert isinstance(result.exception, UserError) and "unknown variant 'nope'" in str(result.exception)
