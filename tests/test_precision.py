"""--precision: the model computes in bf16/fp16 and answers in fp32; guidance gradients stay finite
and the edit stays close to fp32's on the same seed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from musicguide import cli, options

FAST = ["--steps", "3", "--context", "2", "--quiet", "--seed", "4", "--model", "tiny-random", "--device", "cpu"]


def run_cli(args, monkeypatch, capsys) -> int:
    monkeypatch.setattr(sys, "argv", ["musicguide", *map(str, args)])
    try:
        cli.main()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        capsys.readouterr()


def test_auto_is_fp32_on_cpu_and_half_on_cuda():
    assert options.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert options.pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    if torch.cuda.is_available():
        assert options.pick_dtype("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("loss_space", ["latent", "audio"])
def test_reduced_precision_edits_are_finite_and_close_to_fp32(song_wav, tmp_path, monkeypatch, capsys, precision,
                                                             loss_space):
    region = slice(2 * 44100, 3 * 44100)
    edits = {}
    for p in ("fp32", precision):
        out = tmp_path / f"{p}.wav"
        code = run_cli(["infill", song_wav, "--start", "2", "--end", "3", "-o", out, "--precision", p,
                        "--loss-space", loss_space, "--format", "FLOAT", *FAST], monkeypatch, capsys)
        assert code == 0
        meta = json.loads(out.with_suffix(".json").read_text())
        assert meta["settings"]["precision"] == p and np.isfinite(meta["guidance_loss_final"])
        edits[p] = sf.read(out, dtype="float32")[0][region]
    reference, edit = edits["fp32"], edits[precision]
    assert np.isfinite(edit).all()
    snr = 10 * np.log10((reference**2).sum() / max(((edit - reference) ** 2).sum(), 1e-30))
    assert snr > 15, snr  # bf16 keeps 8 bits of mantissa: close, not equal
