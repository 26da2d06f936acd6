"""The commands end to end on the tiny random model: files, lengths, exactness, seeds, sidecars, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicguide.splice import DEFAULT_FADE_SECONDS

from conftest import synth_song
from conftest import run_cli

FAST = ["--steps", "3", "--context", "2", "--quiet", "--seed", "7", "--model", "tiny-random", "--device", "cpu"]
SR = 44100
FADE = round(DEFAULT_FADE_SECONDS * SR)




def read_ints(path: Path) -> np.ndarray:
    data, rate = sf.read(path, dtype="int16", always_2d=True)
    assert rate == SR
    return data


def check_sidecar(path: Path, command: str, inputs: list[Path], **edit_settings) -> dict:
    """The sidecar says what was asked (FAST's options, the command's own, the inputs) and what was
    written (this file, its digest, its length)."""
    from musicguide.edit import DEFAULT_GUIDANCE
    from musicguide.cache import file_sha256 as sha256

    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["command"] == command
    assert meta["model"] == {"name": "tiny-random", "kind": "builtin", "repo": None, "revision": None, "folder": None,
                             "objective": "v"}
    assert meta["seed"] == 7
    expected = {"sampler": "ddim", "steps": 3, "guidance": DEFAULT_GUIDANCE["latent"], "eta": 0.0,
                "loss_space": "latent", "distance": "l1", "consistency": True, "seed": 7, "variation": 1,
                "variations": 1, "device": "cpu", "context_s": 2.0, "precision": "auto", "dtype": "float32",
                **edit_settings}
    assert meta["settings"] == expected
    assert [(i["path"], i["sha256"], i["frames"]) for i in meta["inputs"]] == \
        [(str(p.resolve()), sha256(p), sf.info(p).frames) for p in inputs]
    written = sf.info(path)
    assert meta["output"]["path"] == str(path) and meta["output"]["sha256"] == sha256(path)
    assert meta["output"]["subtype"] == written.subtype and meta["seconds"] == written.frames / SR
    assert all(w["edit_start_s"] < w["edit_end_s"] for w in meta["windows"])
    return meta


def test_infill_keeps_everything_outside_the_gap(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.wav"
    code, _, err = run_cli(["infill", song_wav, "--start", "2", "--end", "3.5", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, err
    original, edited = read_ints(song_wav), read_ints(out)
    assert edited.shape == original.shape and edited.shape[1] == 2
    a, b = 2 * SR - FADE, round(3.5 * SR) + FADE
    assert np.array_equal(edited[:a], original[:a]) and np.array_equal(edited[b:], original[b:])
    assert not np.array_equal(edited[2 * SR : round(3.5 * SR)], original[2 * SR : round(3.5 * SR)])
    meta = check_sidecar(out, "infill", [song_wav], start_s=2.0, end_s=3.5)
    assert [w["edit_start_s"] for w in meta["windows"]] == [2.0] and meta["windows"][0]["edit_end_s"] == 3.5
    assert len(meta["seams"]) == 2 and meta["output"]["subtype"] == "PCM_16"
    assert meta["inputs"][0]["sha256"] and meta["inputs"][0]["frames"] == original.shape[0]


def test_default_output_name_and_mm_ss_times(song_wav, monkeypatch, capsys):
    code, _, err = run_cli(["infill", song_wav, "--start", "0:01.5", "--end", "0:02", *FAST], monkeypatch, capsys)
    assert code == 0, err
    out = song_wav.with_name("song.infill.wav")
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["start_s"] == 1.5


def test_regenerate(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "regen.flac"
    code, _, err = run_cli(["regenerate", song_wav, "--start", "1", "--end", "2", "--strength", "0.5", "-o", out, *FAST],
                           monkeypatch, capsys)
    assert code == 0, err
    original, edited = read_ints(song_wav), read_ints(out)
    assert edited.shape == original.shape
    assert np.array_equal(edited[: SR - FADE], original[: SR - FADE])
    assert np.array_equal(edited[2 * SR + FADE :], original[2 * SR + FADE :])
    check_sidecar(out, "regenerate", [song_wav], start_s=1.0, end_s=2.0, strength=0.5)


def test_continue_across_chunks(song_wav, tmp_path, monkeypatch, capsys):
    """8 s is more than half the tiny model's 11.9 s window, so it takes two chunks."""
    out = tmp_path / "cont.wav"
    code, _, err = run_cli(["continue", song_wav, "--seconds", "8", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, err
    original, edited = read_ints(song_wav), read_ints(out)
    assert edited.shape == (original.shape[0] + 8 * SR, 2)
    assert np.array_equal(edited[: original.shape[0] - FADE], original[: original.shape[0] - FADE])
    meta = check_sidecar(out, "continue", [song_wav], seconds=8.0)
    assert len(meta["windows"]) == 2 and len(meta["seams"]) == 2
    assert meta["seconds"] == pytest.approx(6 + 8)


def test_transition(tmp_path, monkeypatch, capsys):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    sf.write(a, synth_song(5, seed=1), SR, subtype="PCM_16")
    sf.write(b, synth_song(4, seed=2)[:, ::-1].copy(), SR, subtype="PCM_16")
    out = tmp_path / "ab.wav"
    code, _, err = run_cli(["transition", a, b, "--length", "1.5", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, err
    ia, ib, io = read_ints(a), read_ints(b), read_ints(out)
    overlap = round(1.5 * SR)
    assert io.shape[0] == ia.shape[0] + ib.shape[0] - overlap
    keep_a = ia.shape[0] - overlap - FADE
    assert np.array_equal(io[:keep_a], ia[:keep_a])
    assert np.array_equal(io[ia.shape[0] + FADE :], ib[overlap + FADE :])
    check_sidecar(out, "transition", [a, b], length_s=1.5, strength=0.85)


def test_generate_length(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gen.wav"
    args = [a for a in FAST if a not in ("--context", "2")]
    code, _, err = run_cli(["generate", "--seconds", "2.5", "-o", out, *args], monkeypatch, capsys)
    assert code == 0, err
    data, rate = sf.read(out, always_2d=True)
    assert rate == SR and data.shape == (round(2.5 * SR), 2)
    assert np.isfinite(data).all() and np.abs(data).max() > 0


def test_seed_reproduces_bit_for_bit_and_variations_differ(song_wav, tmp_path, monkeypatch, capsys):
    outs = []
    for name in ("one.wav", "two.wav"):
        code, _, err = run_cli(["infill", song_wav, "--start", "2", "--end", "3", "-o", tmp_path / name,
                                "--sampler", "ddpm", *FAST], monkeypatch, capsys)
        assert code == 0, err
        outs.append(read_ints(tmp_path / name))
    assert np.array_equal(*outs)
    code, _, err = run_cli(["infill", song_wav, "--start", "2", "--end", "3", "-o", tmp_path / "v.wav",
                            "--variations", "2", "--sampler", "ddpm", *FAST], monkeypatch, capsys)
    assert code == 0, err
    first, second = read_ints(tmp_path / "v_1.wav"), read_ints(tmp_path / "v_2.wav")
    assert not np.array_equal(first, second)
    meta = json.loads((tmp_path / "v_2.json").read_text())
    assert meta["settings"]["variation"] == 2 and meta["settings"]["variations"] == 2


def test_progress_and_message_without_quiet(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "loud.wav"
    args = [a for a in FAST if a != "--quiet"]
    code, stdout, stderr = run_cli(["infill", song_wav, "--start", "2", "--end", "3", "-o", out, *args], monkeypatch, capsys)
    assert code == 0, stderr
    assert str(out) in stdout.replace("\n", "")
    assert "3/3" in stderr  # the progress bar reached the last step
    # a continuation in two runs: one bar, whose total is both runs' steps
    code, _, stderr = run_cli(["continue", song_wav, "--seconds", "8", "-o", tmp_path / "c.wav", *args], monkeypatch, capsys)
    assert code == 0, stderr
    assert "6/6 steps" in stderr and "3/3" not in stderr


def long_song(tmp_path: Path) -> Path:
    path = tmp_path / "long.wav"
    sf.write(path, synth_song(14), SR, subtype="PCM_16")
    return path


def _bad_inputs(tmp_path: Path, song: Path) -> list[tuple[list, list[str]]]:
    """(arguments, what the one-line error must name: the option, the file or the value at fault)."""
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((3 * SR, 2), dtype=np.float32), SR)
    existing = tmp_path / "exists.wav"
    existing.write_bytes(b"keep me")
    out = ["-o", tmp_path / "never.wav"]
    return [
        (["infill", tmp_path / "missing.wav", "--start", "1", "--end", "2", *out], ["missing.wav"]),
        (["infill", text, "--start", "1", "--end", "2", *out], ["notes.txt"]),
        (["infill", song, "--start", "3", "--end", "2", *out], ["--start", "--end"]),
        (["infill", song, "--start", "2", "--end", "2", *out], ["--start", "--end"]),
        (["infill", song, "--start", "5", "--end", "9", *out], ["--end", "9"]),
        (["infill", song, "--start", "7", "--end", "9", *out], ["--start", "7"]),
        (["infill", song, "--start", "1:5", "--end", "2", *out], ["--start", "'1:5'"]),
        (["infill", song, "--start", "-1", "--end", "2", *out], ["--start", "'-1'"]),
        (["infill", silent, "--start", "1", "--end", "2", *out], ["silent.wav", "silent"]),
        (["infill", song, "--start", "1", "--end", "2", "-o", existing], ["exists.wav", "--overwrite"]),
        (["infill", song, "--start", "1", "--end", "2", "-o", song, "--overwrite"], ["song.wav", "input"]),
        (["infill", song, "--start", "1", "--end", "2", "-o", tmp_path / "x.mp3"], ["x.mp3", ".wav", ".flac"]),
        (["infill", song, "--start", "1", "--end", "2", "--model", "no-such-model", *out], ["'no-such-model'"]),
        (["infill", song, "--start", "1", "--end", "2", "--model", "./no/such/folder", *out], ["./no/such/folder"]),
        (["infill", song, "--start", "1", "--end", "2", "--steps", "0", *out], ["--steps"]),
        (["infill", song, "--start", "1", "--end", "2", "--variations", "0", *out], ["--variations"]),
        (["infill", long_song(tmp_path), "--start", "0.5", "--end", "13", *out], ["12.5"]),  # the region's length
        (["regenerate", song, "--start", "1", "--end", "2", "--strength", "1.5", *out], ["--strength", "1.5"]),
        (["continue", song, "--seconds", "-3", *out], ["--seconds", "-3"]),
        (["transition", song, song, "--length", "60", *out], ["--length", "60"]),
        (["generate", "--seconds", "600", *out], ["--seconds", "600"]),
    ]


def test_bad_input_gives_one_line_and_exit_2(song_wav, tmp_path, monkeypatch, capsys):
    for args, named in _bad_inputs(tmp_path, song_wav):
        code, stdout, stderr = run_cli([*args, "--quiet", "--device", "cpu"], monkeypatch, capsys)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2, (args, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, stderr)
        assert all(phrase in lines[0] for phrase in named), (args, named, lines[0])
        assert "Traceback" not in stderr
        assert not (tmp_path / "never.wav").exists() and not (tmp_path / "never.json").exists()
    assert (tmp_path / "exists.wav").read_bytes() == b"keep me"


def test_device_cuda_edits_on_a_gpu_and_is_a_one_line_error_without_one(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu.wav"
    args = [*FAST[: FAST.index("--device")], "--device", "cuda"]
    code, _, stderr = run_cli(["infill", song_wav, "--start", "2", "--end", "3", "-o", out, *args], monkeypatch, capsys)
    if torch.cuda.is_available():
        assert code == 0, stderr
        original, edited = read_ints(song_wav), read_ints(out)
        assert edited.shape == original.shape
        assert np.array_equal(edited[: 2 * SR - FADE], original[: 2 * SR - FADE])
        assert json.loads(out.with_suffix(".json").read_text())["settings"]["device"].startswith("cuda")
    else:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert "--device" in lines[0] and "cuda" in lines[0]
        assert not out.exists() and not out.with_suffix(".json").exists()


def test_models_list(monkeypatch, capsys):
    code, stdout, _ = run_cli(["models", "list"], monkeypatch, capsys)
    assert code == 0
    for name in ("sao-1.0", "sao-small", "tiny-random"):
        assert name in stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["infill", "--bogus"], ["models", "list"], []])
def test_answers_that_need_no_model_do_not_import_torch(args):
    """Issue 22: help, the version, a parser error and the model list come without torch (~1 s of
    import); bench/startup.py times them."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("startup", Path(__file__).resolve().parents[1] / "bench" / "startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    done = subprocess.run([sys.executable, "-c", startup.PROBE, "musicguide", *args], capture_output=True, text=True)
    assert done.stderr.strip().splitlines()[-1] == "False", done.stderr[-2000:]


def test_help_lists_every_command_without_importing_one():
    """Issue 22: the root's --help answers from cli.commands.COMMANDS in click's plain layout, so
    that it imports no command module (they pull in the API) and not rich (typer's rich help alone
    took three times Python's start-up)."""
    import subprocess
    import sys

    from musicguide.cli.commands import COMMANDS

    probe = ("import sys, runpy; sys.argv = ['musicguide', '--help']\n"
             "try:\n    runpy.run_module('musicguide', run_name='__main__', alter_sys=True)\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' or m in "
             "('musicguide.api', 'musicguide.cli.edits', 'musicguide.cli.tools', 'musicguide.cli.evaluation')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr[-2000:]
    listed = done.stdout.split("Commands:")[1].splitlines()[1:]
    assert [line.split()[0] for line in listed] == list(COMMANDS)
    assert listed[0].split(None, 1)[1].startswith("Replace a stretch of the song")


def test_a_mistyped_command_gets_a_suggestion_from_every_command():
    """The entry point registers no command for a name it does not know, so typer's own "Did you
    mean" would have nothing to draw on: the root group draws on cli.commands.COMMANDS."""
    import subprocess
    import sys

    for typo, meant in (("infil", "'infill'"), ("model", "'models'"), ("evaluat", "'evaluate'")):
        done = subprocess.run([sys.executable, "-m", "musicguide", typo], capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.splitlines() == [f"error: No such command '{typo}'. Did you mean {meant}? (see musicguide --help)"]


def test_the_command_table_says_what_each_command_says_of_itself():
    """cli.commands.COMMANDS stands in for the commands in the root's help: each row must read as
    click would write it from the command itself (its short-help rule at any width), in the order
    they register, and its module must be the one that registers it."""
    import subprocess
    import sys

    import typer
    from typer._click.utils import make_default_short_help

    from musicguide.cli import app
    from musicguide.cli.commands import COMMANDS, MODULES

    group = typer.main.get_command(app)
    assert list(group.commands) == list(COMMANDS)
    for name, (_, summary) in COMMANDS.items():
        for width in (20, 45, 75, 500):
            assert make_default_short_help(summary, width) == group.commands[name].get_short_help_str(width), name
    for module in MODULES:  # alone in a fresh process, it registers its commands (a group: its subcommands)
        probe = (f"import typer, {module}\nfrom musicguide.cli.root import app\ngroup = typer.main.get_command(app)\n"
                 "print(sorted(n for n, c in group.commands.items() if getattr(c, 'commands', True)))")
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert set(eval(done.stdout)) == {name for name, (home, _) in COMMANDS.items() if home == module}, module


def test_loading_a_model_imports_neither_torch_dynamo_nor_sympy(tmp_path):
    """Issue 22: arithmetic on `meta` tensors imported torch._dynamo (about a second), and torch's
    meta kernels import sympy on their first check (half a second): a model to be loaded is built
    uninitialized on its device instead (models.layers.uninitialized), for either family."""
    import subprocess
    import sys

    from musicguide.models.folder import save_model_folder
    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, tiny_sa3_config

    save_model_folder(SA3Model(sa3_config_from_dict(tiny_sa3_config())), tmp_path / "sa3")
    probe = ("import sys, torch\nfrom musicguide.models.folder import load_model\nload_model('demo')\n"
             f"load_model({str(tmp_path / 'sa3')!r})\n"
             "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_the_garbage_collector_sleeps_through_the_torch_import_only():
    """Issue 22: the entry point turns the cyclic collector off until torch has imported (it walked
    torch's million new objects three times, 0.17 s of a one-step edit), then freezes what exists
    and turns it back on. The finder that does so stays through a lookup that imports nothing,
    removes itself after the import, and torch works."""
    import subprocess
    import sys

    probe = ("import gc, importlib.util, sys\nimport musicguide.__main__ as entry\n"
             "entry._CollectAfterTorch.install()\n"
             "rare = not gc.isenabled()\n"
             "importlib.util.find_spec('torch')\n"
             "waiting = any(isinstance(f, entry._CollectAfterTorch) for f in sys.meta_path) and gc.get_freeze_count() == 0\n"
             "import torch.nn\n"
             "print(rare, waiting, gc.isenabled(), gc.get_freeze_count() > 100_000, "
             "any(isinstance(f, entry._CollectAfterTorch) for f in sys.meta_path), float(torch.ones(3).sum()))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True", "True", "False", "3.0"]


@pytest.mark.slow
def test_the_edit_breakdown_times_every_phase():
    """bench/edit_steps.py --breakdown wraps each phase's function where musicguide holds it: a
    renamed or moved function would leave its row at nothing, and the table would lie."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "edit_steps.py"
    if not (bench.parents[2] / "shared" / "audio" / "battle_60s.ogg").is_file():
        pytest.skip("needs ../shared/audio beside the repository")
    done = subprocess.run([sys.executable, str(bench), "--breakdown"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[1]) for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| phase")}
    assert len(rows) == 10 and all(seconds > 0 for seconds in rows.values()), done.stdout


def test_the_entry_point_keeps_freed_memory_unless_told_not_to(monkeypatch):
    """Issue 22: glibc is asked (mallopt) to reuse freed memory rather than unmap it; the switch
    MUSICGUIDE_SYSTEM_MALLOC=1 leaves the allocator alone."""
    import ctypes
    import sys

    import musicguide.__main__ as entry

    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("MUSICGUIDE_SYSTEM_MALLOC", raising=False)
    entry._keep_freed_memory()
    assert calls == [(-4, 0), (-1, 2**31 - 1)]
    calls.clear()
    monkeypatch.setenv("MUSICGUIDE_SYSTEM_MALLOC", "1")
    entry._keep_freed_memory()
    assert calls == []


@pytest.mark.slow
def test_the_load_bench_runs_and_writes_its_table(tmp_path):
    """bench/cli_speed.py --load-only, as a short GPU lease would run it (`--out`), on the demo and
    on the built-in model (which has no file: its read and build columns are dashes)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "cli_speed.py"
    done = subprocess.run([sys.executable, str(bench), "--load-only", "--shapes", "demo", "tiny-random", "--rounds", "1",
                           "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(" | ") for line in (tmp_path / "cli_speed.md").read_text().splitlines() if line.startswith("| ")]
    demo, builtin = rows[1], rows[2]  # after the header row
    assert demo[0] == "| demo" and demo[1].endswith(" MB") and demo[4].endswith("x") and demo[6].endswith("x")
    assert builtin[0] == "| tiny-random" and builtin[2] == builtin[4] == "–" and builtin[7].endswith("s |")
