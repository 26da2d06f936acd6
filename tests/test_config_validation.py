"""Every number in a model_config.json is checked when it is read (issue 13, item 14).

A bad value is a UserError that names the file, the key path and the value, on one line; through
the CLI it is exit 2, one line on stderr, and nothing written. The published configs keep loading.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from musicguide.errors import UserError
from musicguide.models import ModelConfig, tiny_random_config
from musicguide.train import PRESETS, preset_config

from conftest import synth_song
from conftest import run_cli as run_cli_full

REPO = Path(__file__).resolve().parents[1]
SAO_CONFIG = json.loads((REPO / "tests" / "data" / "sao_reference_keys.json").read_text())["config"]
PUBLISHED_SAO = REPO.parent / "shared" / "docs" / "models" / "sao-1.0.model_config.json"
DEMO_CONFIG = REPO / "musicguide" / "weights" / "demo" / "model_config.json"

NAN, INF = float("nan"), float("inf")
ENCODER = "model.pretransform.config.encoder.config"
DIT = "model.diffusion.config"


def edited(config: dict, key_path: str, value: Any) -> dict:
    """A copy of `config` with `value` at a dotted key path; `[i]` indexes a list."""
    data = copy.deepcopy(config)
    *parents, last = key_path.replace("[", ".[").split(".")
    node = data
    for part in parents:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    node[last] = value
    return data


def write_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model_config.json"
    path.write_text(json.dumps(data))  # NaN and Infinity are written as JSON's Python extension
    return path


# (key path, bad value, the key as the message names it, the value as it shows it) on SAO 1.0's
# published config: what a message must say, not its sentence.
BAD_VALUES = [
    ("sample_rate", 0, "sample_rate", "0"),
    ("sample_rate", -1, "sample_rate", "-1"),
    ("sample_rate", 10**12, "sample_rate", "1000000000000"),
    ("sample_rate", "44100", "sample_rate", '"44100"'),
    ("sample_rate", True, "sample_rate", "true"),
    ("sample_rate", NAN, "sample_rate", "NaN"),
    ("sample_rate", 44100.0, "sample_rate", "44100.0"),
    ("sample_rate", None, "sample_rate", "null"),
    ("sample_size", 10**12, "sample_size", "1000000000000"),
    ("sample_size", 1e12, "sample_size", "1000000000000.0"),
    ("sample_size", 0, "sample_size", "0"),
    ("sample_size", 10**4000, "sample_size", "4000 digits"),
    ("sample_size", 2048 * 13000, "sample_size", "26624000"),
    ("sample_size", 2048 * 1000 + 1, "sample_size", "2048001"),
    ("audio_channels", 0, "audio_channels", "0"),
    ("audio_channels", 2.5, "audio_channels", "2.5"),
    ("audio_channels", 1, "audio_channels", "1"),
    ("model.io_channels", 0, "model.io_channels", "0"),
    ("model.pretransform.scale", 0, "model.pretransform.scale", "0"),
    ("model.pretransform.scale", -0.7, "model.pretransform.scale", "-0.7"),
    ("model.pretransform.scale", INF, "model.pretransform.scale", "Infinity"),
    (f"{ENCODER}.channels", 0, f"{ENCODER}.channels", "0"),
    (f"{ENCODER}.channels", 2.5, f"{ENCODER}.channels", "2.5"),
    (f"{ENCODER}.in_channels", 10**6, f"{ENCODER}.in_channels", "1000000"),
    (f"{ENCODER}.strides", [2, 4, 4, 8, 0], f"{ENCODER}.strides[4]", "0"),
    (f"{ENCODER}.strides", [2, 4, 4, 8, 8.0], f"{ENCODER}.strides[4]", "8.0"),
    (f"{ENCODER}.strides", "24488", f"{ENCODER}.strides", '"24488"'),
    (f"{ENCODER}.strides", [1] * 17, f"{ENCODER}.strides", "17"),
    (f"{ENCODER}.c_mults", [1, 2, 4, 8, -16], f"{ENCODER}.c_mults[4]", "-16"),
    (f"{ENCODER}.latent_dim", 0, f"{ENCODER}.latent_dim", "0"),
    ("model.pretransform.config.latent_dim", 0, "model.pretransform.config.latent_dim", "0"),
    ("model.pretransform.config.downsampling_ratio", 0, "model.pretransform.config.downsampling_ratio", "0"),
    ("model.conditioning.cond_dim", 0, "model.conditioning.cond_dim", "0"),
    ("model.conditioning.configs[0].config.max_length", 0, "model.conditioning.configs[0].config.max_length", "0"),
    ("model.conditioning.configs[2].config.max_val", NAN, "model.conditioning.configs[2].config.max_val", "NaN"),
    ("model.conditioning.configs[2].config.max_val", 0, "configs[2].config.max_val", "min_val"),
    (f"{DIT}.embed_dim", 0, f"{DIT}.embed_dim", "0"),
    (f"{DIT}.depth", 0, f"{DIT}.depth", "0"),
    (f"{DIT}.depth", 10**6, f"{DIT}.depth", "1000000"),
    (f"{DIT}.num_heads", 0, f"{DIT}.num_heads", "0"),
    (f"{DIT}.num_heads", 7, "num_heads", "7"),
    (f"{DIT}.patch_size", 0, f"{DIT}.patch_size", "0"),
    (f"{DIT}.cond_token_dim", 1.5, f"{DIT}.cond_token_dim", "1.5"),
    (f"{DIT}.global_cond_dim", -1, f"{DIT}.global_cond_dim", "-1"),
    (f"{DIT}.ff_kwargs", {"mult": 0}, f"{DIT}.ff_kwargs.mult", "0"),
    (f"{DIT}.ff_kwargs", {"mult": NAN}, f"{DIT}.ff_kwargs.mult", "NaN"),
    (f"{DIT}.norm_kwargs", {"eps": 0}, f"{DIT}.norm_kwargs.eps", "0"),
    (f"{DIT}.input_concat_dim", 0.0, f"{DIT}.input_concat_dim", "0.0"),
    ("model.diffusion.distribution_shift_options", {"max_shift": INF},
     "model.diffusion.distribution_shift_options.max_shift", "Infinity"),
]


@pytest.mark.parametrize(("key_path", "value", "named", "shown"), BAD_VALUES,
                         ids=[f"{key}={value!r}"[:60] for key, value, _, _ in BAD_VALUES])
def test_a_bad_number_names_the_file_the_key_and_the_value(tmp_path: Path, key_path: str, value: Any,
                                                         named: str, shown: str) -> None:
    path = write_config(tmp_path, edited(SAO_CONFIG, key_path, value))
    with pytest.raises(UserError) as raised:
        ModelConfig.from_json(path)
    message = raised.value.message
    assert message.startswith(f"{path}: ") and named in message
    # the value as a whole token: "0" is not found inside "8000" or "1e-06"
    assert re.search(rf"(?<![\w.+-]){re.escape(shown)}(?![\w.])", message), (shown, message)
    assert "\n" not in str(raised.value)


def test_too_many_tokens_for_one_window_is_refused() -> None:
    # 426.7 s at 96 kHz is within the time limit, but 20000 latent frames are not.
    data = edited(edited(SAO_CONFIG, "sample_rate", 96000), "sample_size", 2048 * 20000)
    with pytest.raises(UserError) as raised:
        ModelConfig.from_dict(data)
    assert "20000" in raised.value.message and "16384" in raised.value.message  # what it is, what is allowed


@pytest.mark.parametrize(("content", "message"), [
    (b'{"sample_rate": ' + b"1" * 5000 + b"}", "JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    (b'{"sample_rate": "\xff"}', "JSON"),
    (b"[]", "JSON object"),
    (b" " * (1 << 20) + b"{}", "too large"),
])
def test_a_file_that_is_not_a_config_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model_config.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as raised:
        ModelConfig.from_json(path)
    assert message in raised.value.message and str(path) in raised.value.message
    assert "\n" not in str(raised.value)


def test_the_edges_of_each_range_are_accepted() -> None:
    for key_path, value in [("sample_rate", 8000), ("sample_rate", 384000), (f"{DIT}.ff_kwargs", {"mult": 3}),
                            ("model.pretransform.scale", 1), ("model.diffusion.distribution_shift_options",
                                                              {"type": "sine", "base_shift": 0.5, "use_sine": True})]:
        ModelConfig.from_dict(edited(SAO_CONFIG, key_path, value))


def test_published_shipped_and_preset_configs_still_load() -> None:
    configs = [SAO_CONFIG, json.loads(DEMO_CONFIG.read_text()), tiny_random_config().to_dict(),
               *(preset_config(name).to_dict() for name in PRESETS)]
    if PUBLISHED_SAO.is_file():
        configs.append(json.loads(PUBLISHED_SAO.read_text()))
    for data in configs:
        config = ModelConfig.from_dict(data)
        assert ModelConfig.from_dict(config.to_dict()) == config  # and what it writes reads back
    assert ModelConfig.from_json(DEMO_CONFIG).sample_rate == 44100


# ---- through the CLI: exit 2, one line, nothing written


def run_cli(args, monkeypatch, capsys) -> tuple[int, str]:
    code, _, err = run_cli_full(args, monkeypatch, capsys)
    return code, err


def model_folder_with(tmp_path: Path, key_path: str, value: Any) -> Path:
    """A model folder whose config has one bad value; the weights are never reached."""
    folder = tmp_path / "bad-model"
    write_config(folder, edited(tiny_random_config().to_dict(), key_path, value))
    (folder / "model.safetensors").write_bytes(b"never read")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def song(tmp_path: Path) -> Path:
    path = tmp_path / "song.wav"
    sf.write(path, synth_song(3.0), 44100, subtype="PCM_16")
    return path


INFILL = ["infill", "--start", "1", "--end", "2", "--steps", "2", "--quiet", "--device", "cpu"]


@pytest.mark.parametrize(("key_path", "value", "named", "shown"), [
    ("sample_rate", 0, "sample_rate", "not 0"),
    ("sample_size", 10**12, "sample_size", "1000000000000"),
    ("model.pretransform.scale", NAN, "model.pretransform.scale", "NaN"),
    (f"{DIT}.num_heads", 3, "num_heads", "(3)"),
])
def test_infill_with_a_bad_model_config_exits_2_with_one_line(tmp_path: Path, song: Path, monkeypatch, capsys,
                                                             key_path: str, value: Any, named: str,
                                                             shown: str) -> None:
    folder = model_folder_with(tmp_path, key_path, value)
    before = snapshot(tmp_path)
    code, stderr = run_cli([*INFILL, song, "-o", tmp_path / "out.wav", "--model", folder], monkeypatch, capsys)
    assert code == 2, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"error: {folder / 'model_config.json'}: ") and named in line and shown in line
    assert snapshot(tmp_path) == before


def test_the_installed_command_refuses_a_bad_config_in_one_line(tmp_path: Path, song: Path) -> None:
    """The real process: what a user sees on stderr, with nothing else printed and nothing written."""
    folder = model_folder_with(tmp_path, "sample_rate", 0)
    before = snapshot(tmp_path)
    command = Path(sys.executable).with_name("musicguide")
    result = subprocess.run([command, *INFILL, song, "-o", tmp_path / "out.wav", "--model", folder],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {folder / 'model_config.json'}: ") and "sample_rate" in line
    assert snapshot(tmp_path) == before


def test_a_huge_seed_in_the_registry_exits_2_with_one_line(tmp_path: Path, song: Path, monkeypatch,
                                                          capsys) -> None:
    registry = tmp_path / "checkpoints.toml"
    registry.write_text('[models.noise]\nsource = "builtin"\nseed = 18446744073709551616\n'
                        'license = "MIT"\ndescription = "d"\n')
    monkeypatch.setenv("MUSICGUIDE_CHECKPOINTS", str(registry))
    before = snapshot(tmp_path)
    code, stderr = run_cli([*INFILL, song, "-o", tmp_path / "out.wav", "--model", "noise"], monkeypatch, capsys)
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {registry}: ")
    assert "'noise'" in lines[0] and "'seed'" in lines[0] and "18446744073709551616" in lines[0]
    assert snapshot(tmp_path) == before
