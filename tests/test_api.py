"""The Python API as a user meets it: docs/api.md runs as written, and an Editor's edits are the
CLI's, bit for bit, from a path or from an array."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import golden_outputs as golden
from conftest import synth_song
from musicguide import Editor, Result
from musicguide.errors import BadArgument, UserError, cli_wording

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
RECORD = json.loads(golden.RECORD.read_text())
SR = 44100
FAST = {"steps": 3, "seed": 11, "context": 2}


@pytest.fixture(scope="module")
def editor() -> Editor:
    return Editor.from_pretrained("tiny-random", device="cpu")


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.slow
def test_the_api_page_runs_as_written(tmp_path, monkeypatch):
    """Every block after the first (a sketch with a file of your own), in one namespace, in order."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = doc_blocks()
    assert len(blocks) >= 9
    for block in blocks[1:]:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["steps_seen"][-1] == (16, 16)
    assert len(list(namespace["folder"].glob("*.json"))) == 3


def _digest(audio: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio.numpy().T).tobytes()).hexdigest()


def _threads():
    class Pinned:
        def __enter__(self):
            self.threads = torch.get_num_threads()
            torch.set_num_threads(golden.THREADS)

        def __exit__(self, *exc):
            torch.set_num_threads(self.threads)

    return Pinned()


def test_an_editor_infill_is_the_cli_infill_from_a_path_and_from_an_array(editor, tmp_path):
    if golden.platform() != RECORD["platform"]:
        pytest.skip(f"the record was written with {RECORD['platform']}, this is {golden.platform()}")
    files = golden.inputs(tmp_path)
    want = RECORD["cases"]["infill"][0]
    with _threads():
        from_path = editor.infill(files["SONG"], "2", "3.5", **FAST)
        array, rate = sf.read(files["SONG"], dtype="float32", always_2d=True)
        from_array = editor.infill(array.T, 2, 3.5, sample_rate=rate, **FAST)
    assert _digest(from_path.audio) == want["samples_sha256"] == _digest(from_array.audio)
    got = from_path.sidecar.to_dict()
    for key in ("settings", "windows", "seams", "guidance_loss_final", "seed", "model"):
        assert got[key] == want["sidecar"][key], key
    assert from_array.sidecar.inputs[0]["path"] is None and from_array.sidecar.inputs[0]["format"] == "array"
    saved = from_path.save(tmp_path / "out.wav", sample_format="FLOAT")
    assert golden.describe(saved)["samples_sha256"] == want["samples_sha256"]


def test_save_never_replaces_a_file_or_an_input_unless_told(editor, tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, synth_song(4.0), SR, subtype="PCM_16")
    result = editor.infill(song, 1, 2, **FAST)
    out = result.save(tmp_path / "out.flac")
    assert out.is_file() and out.with_suffix(".json").is_file()
    first = out.read_bytes()
    with pytest.raises(UserError, match="exists"):
        result.save(out)
    with pytest.raises(UserError):
        result.save(song, overwrite=True)  # the input
    assert out.read_bytes() == first
    result.save(out, overwrite=True)
    edited, _ = sf.read(out, dtype="int16")
    original, _ = sf.read(song, dtype="int16")
    assert np.array_equal(edited[: SR // 2], original[: SR // 2])  # PCM_16 in, PCM_16 out, untouched exact
    assert json.loads(out.with_suffix(".json").read_text())["output"]["subtype"] == "PCM_16"
    result.close()


@pytest.mark.parametrize("edit, runs", [
    (lambda e, song: e.continue_(song, 8.0, sample_rate=SR, **FAST), 2),
    pytest.param(lambda e, song: e.restyle(song, toward=["rock"], sample_rate=SR, steps=2, seed=1, context=2), None,
                 marks=pytest.mark.slow),
    (lambda e, song: e.infill(song, 1, 2, sample_rate=SR, variations=2, **FAST), 1),
])
def test_the_callback_counts_every_step_of_every_run(editor, edit, runs):
    """Multi-chunk continue and a whole-song restyle (in windows) report one total, reached at the end."""
    song = synth_song(14.0 if runs is None else 6.0).T.copy()
    calls = []
    result = edit(_Spy(editor, calls), song)
    assert isinstance(result, Result)
    totals = {total for _, total, _ in calls}
    assert len(totals) == 1 and [done for done, _, _ in calls] == list(range(1, len(calls) + 1))
    assert calls[-1][0] == calls[-1][1]
    steps = calls[0][2]["steps"]
    if runs is not None:
        assert calls[-1][1] == runs * steps
    else:  # a 14 s song in the tiny model's 11.9 s windows: more than one run
        assert calls[-1][1] >= 2 * steps and len(result.windows) * steps == calls[-1][1]


class _Spy:
    """The editor, with every method given a callback that records its calls."""

    def __init__(self, editor, calls):
        self.editor, self.calls = editor, calls

    def __getattr__(self, name):
        method = getattr(self.editor, name)
        return lambda *args, **kwargs: method(*args, callback=lambda *call: self.calls.append(call), **kwargs)


def test_array_inputs_are_checked_at_the_boundary(editor):
    song = synth_song(3.0).T.copy()
    with pytest.raises(UserError, match="sample_rate"):
        editor.infill(song, 1, 2, **FAST)
    with pytest.raises(UserError, match="channels, samples"):
        editor.infill(song.T.copy(), 1, 2, sample_rate=SR, **FAST)
    with pytest.raises(UserError, match="shorter than one second"):
        editor.infill(song[:, : SR // 2], 0.1, 0.2, sample_rate=SR, **FAST)
    with pytest.raises(UserError, match="NaN"):
        editor.infill(np.full_like(song, np.nan), 1, 2, sample_rate=SR, **FAST)
    with pytest.raises(BadArgument, match="`start` .* must be before `end`") as raised:
        editor.infill(song, 2, 1, sample_rate=SR, **FAST)
    assert isinstance(raised.value, ValueError)  # a typed error, named after the API's parameters
    assert cli_wording(str(raised.value)).startswith("--start (2) must be before --end (1)")
    with pytest.raises(BadArgument, match="`strength`"):
        editor.regenerate(song, 1, 2, strength=1.5, sample_rate=SR, **FAST)
    with pytest.raises(BadArgument, match="`loss_space`"):
        editor.infill(song, 1, 2, sample_rate=SR, loss_space="mel", **FAST)


def test_an_option_the_api_does_not_take_is_a_type_error_not_ignored(editor):
    """`output=` or `overwrite=` belong to the CLI: silently dropped, a script would wait for a file."""
    song = synth_song(3.0).T.copy()
    with pytest.raises(TypeError, match="output"):
        editor.infill(song, 1, 2, sample_rate=SR, output="x.wav", **FAST)
    with pytest.raises(TypeError, match="stepz"):
        editor.continue_(song, 1.0, sample_rate=SR, stepz=3)


def test_a_mono_array_at_another_rate_is_converted_and_said(editor):
    mono = synth_song(3.0, sample_rate=22050)[:, 0].copy()
    result = editor.infill(mono, 1, 2, sample_rate=22050, **FAST)
    assert result.audio.shape == (2, 3 * SR)
    notes = result.sidecar.inputs[0]["conversions"]
    assert any("mono" in n for n in notes) and any("22050" in n for n in notes)
