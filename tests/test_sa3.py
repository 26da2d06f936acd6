"""Stable Audio 3 (issue 31): the SAME autoencoder against the reference package, and its config.

The numerical comparison needs the reference's environment (`bash ../shared/tools/reference-sa3-env.sh
/tmp/musicguide-sa3env`, then MUSICGUIDE_SA3_REFERENCE_PYTHON=/tmp/musicguide-sa3env/bin/python;
.ci/run builds it); the rest runs anywhere."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from musicguide.models.same import SAME, same_config_from_dict

REPO = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("conformance_sa3", REPO / "bench" / "conformance_sa3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.conformance
@pytest.mark.slow
def test_same_and_the_dit_equal_the_reference(tmp_path):
    """Both SAME structures (chunks with the midpoint shift; a sliding window), random weights, a
    whole number of chunks and a length the model pads: encode and decode within 1e-5 relative. The
    DiT: one forward for each way of conditioning (adaLN with cross-attention, the global condition
    and the inpainting input; a prepended global token with a patch and a sliding window; none).
    The whole tiny SA3 model as the reference's factory builds it: encode, decode, and the network
    with the timing, the inpainting condition and the null text conditioning; with a T5Gemma prompt
    conditioner: the tokens, and the network at CFG scale 1, at 3 (adaptive projection) and at 3
    against a negative prompt."""
    python = os.environ.get("MUSICGUIDE_SA3_REFERENCE_PYTHON")
    if not python:
        pytest.skip("set MUSICGUIDE_SA3_REFERENCE_PYTHON to the stable-audio-3 environment's python "
                    "(bash ../shared/tools/reference-sa3-env.sh DIR) to compare with the reference")
    pytest.importorskip("transformers", reason="the text rows need the 'text' extra (transformers)")
    module = bench()
    encoder = module.build_tiny_t5gemma(tmp_path / "t5gemma")
    reference = module.run_reference(python, encoder)
    rows = module.compare(reference, encoder)
    assert len(rows) == (2 * len(module.CASES) * len(module.AUDIO_SAMPLES) + len(module.DIT_CASES) + 3
                         + len(module.GRIDS) + 5)
    assert [row for row in rows if not row[2] <= module.TOLERANCE] == []
    # the rows can fail: the prompt moves the output, and plain CFG is not the reference's projected CFG
    from musicguide.text import projected_cfg

    io = reference["sa3-text/io"]
    assert module._relative(io["cfg 1"], io["cfg 3"]) > 1e-3
    plain = io["uncond"] + (io["cfg 1"] - io["uncond"]) * module.TEXT_CFG_SCALE
    assert module._relative(plain, io["cfg 3"]) > 1e-3
    projected = projected_cfg(io["x"], io["t"], io["cfg 1"], io["uncond"], module.TEXT_CFG_SCALE)
    assert module._relative(projected, io["cfg 3"]) <= module.TOLERANCE


def test_same_shapes_and_lengths():
    """Latents: one per patch x strides samples, the input padded to whole chunks; decode returns
    the padded length; the state dict has the reference's top-level names."""
    config = bench().CASES["same-chunks-midpoint"]
    model = SAME(same_config_from_dict(config)).eval()
    assert model.config.downsampling_ratio == 4 * 2 * 4
    with torch.no_grad():
        latents = model.encode(torch.randn(1, 2, 1000))
        assert latents.shape == (1, 8, 32)  # 1000 samples -> 250 patches -> padded to 256 -> / 8
        assert model.decode(latents).shape == (1, 2, 1024)
    assert {key.split(".")[0] for key in model.state_dict()} == {"encoder", "decoder", "bottleneck"}
    assert "encoder.layers.0.transformers.0.self_attn.to_qkv.weight" in model.state_dict()
    assert "encoder.layers.0.mapping.weight_g" in model.state_dict()


@pytest.mark.parametrize("change, words", [
    (lambda c: c["encoder"]["config"].update(conformer=True), "conformer"),
    (lambda c: c["decoder"]["config"].update(mask_noise=0.1), "mask_noise"),
    (lambda c: c["decoder"]["config"].update(chunk_size=16), "differ"),
    (lambda c: c["pretransform"]["config"].update(oversampling=2), "oversampled"),
    (lambda c: c["bottleneck"]["config"].update(noise_regularize=True), "noise"),
    (lambda c: c["encoder"]["config"].update(made_up=1), "made_up"),
])
def test_a_config_the_reference_would_build_differently_is_refused(change, words):
    config = copy.deepcopy(bench().CASES["same-chunks-midpoint"])
    change(config)
    with pytest.raises(ValueError, match=words):
        same_config_from_dict(config)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["config"].update(prepend_cond_dim=4), "prepend_cond_dim"),
    (lambda c: c["config"].update(modular_local_cond_configs=[{"id": "x", "dim": 4}]), "modular"),
    (lambda c: c["config"]["attn_kwargs"].update(made_up=True), "made_up"),
    (lambda c: c["config"].update(global_cond_type="cross"), "global_cond_type"),
])
def test_a_dit_config_the_reference_would_build_differently_is_refused(change, words):
    from musicguide.models.sa3_dit import sa3_dit_config_from_dict

    config = copy.deepcopy(bench().DIT_CASES["dit-adaln-cross-concat"])
    change(config)
    with pytest.raises(ValueError, match=words):
        sa3_dit_config_from_dict(config)


def test_the_dit_keeps_the_frames_and_takes_each_condition():
    from musicguide.models.sa3_dit import SA3DiT, sa3_dit_config_from_dict

    module = bench()
    for name, config in module.DIT_CASES.items():
        model = SA3DiT(sa3_dit_config_from_dict(config)).eval()
        inputs = module.dit_inputs(config, torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model(inputs.pop("x"), inputs.pop("t"), **inputs)
        assert out.shape == (2, 8, module.DIT_FRAMES) and torch.isfinite(out).all(), name


# ---- every command with an SA3-shaped model ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sa3(tmp_path_factory):
    from musicguide.models.folder import save_model_folder
    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, tiny_sa3_config

    folder = tmp_path_factory.mktemp("models") / "tiny-sa3"
    torch.manual_seed(0)
    save_model_folder(SA3Model(sa3_config_from_dict(tiny_sa3_config())), folder)
    return folder


def test_an_sa3_folder_loads_as_saved(tiny_sa3):
    from musicguide.models.folder import load_model_folder
    from musicguide.models.sa3 import SA3Model

    model = load_model_folder(tiny_sa3)
    assert isinstance(model, SA3Model) and model.downsampling_ratio == 256 and model.objective == "rf_denoiser"
    latents = torch.randn(1, 8, 16)
    again = load_model_folder(tiny_sa3)
    assert torch.equal(model.decode(latents), again.decode(latents))


@pytest.mark.parametrize("command, kept", [
    (["infill", "{song}", "--start", "8", "--end", "10"], [(0, 7.0), (11.0, 20.0)]),
    (["regenerate", "{song}", "--start", "8", "--end", "10"], [(0, 7.0), (11.0, 20.0)]),
    (["continue", "{song}", "--seconds", "3"], [(0, 19.0)]),
    (["transition", "{song}", "{other}", "--length", "3"], [(0, 16.0)]),
    (["restyle", "{song}", "--toward", "rock", "--start", "6", "--end", "12"], [(0, 5.0), (13.0, 20.0)]),
    (["loop", "{song}", "--start", "4", "--end", "8"], []),
    (["generate", "--seconds", "4"], []),
])
def test_every_command_edits_with_an_sa3_model_and_keeps_the_rest(command, kept, tiny_sa3, tmp_path, monkeypatch,
                                                                   capsys):
    """Sample-exact outside the edit (the seam fades and the model's context aside: a second of margin)."""
    import soundfile as sf

    from conftest import run_cli, synth_song

    song, other = tmp_path / "song.wav", tmp_path / "other.wav"
    sf.write(song, synth_song(20.0), 44100, subtype="PCM_16")
    sf.write(other, synth_song(10.0, seed=3), 44100, subtype="PCM_16")
    args = [a.format(song=song, other=other) for a in command]
    out = tmp_path / "out.wav"
    code, _, stderr = run_cli([*args, "--model", tiny_sa3, "--steps", "2", "--seed", "1", "-q", "-o", out],
                              monkeypatch, capsys)
    assert code == 0, stderr
    edited, _ = sf.read(out, dtype="int16")
    original, _ = sf.read(song, dtype="int16")
    assert len(edited) > 0
    for a, b in kept:
        span = slice(round(a * 44100), round(b * 44100))
        assert (edited[span] == original[span]).all(), (a, b)


def test_a_t5gemma_conditioner_is_read_as_the_reference_builds_it():
    from musicguide.models.sa3 import sa3_config_from_dict, tiny_sa3_config

    config = sa3_config_from_dict(tiny_sa3_config(prompt={"max_length": 64, "padding_mode": "learned"}))
    (text,) = config.cross_attention_texts()
    assert (text.id, text.encoder_name, text.max_length, text.padding_mode, text.elsewhere) == (
        "prompt", "google/t5gemma-b-b-ul2", 64, "learned", None)
    assert config.cross_attention_ids == ("prompt", "seconds_total") and config.text_ids == ("prompt",)
    assert sa3_config_from_dict(tiny_sa3_config(prompt={"repo_id": "x/y", "subfolder": "t5"})).texts[0].elsewhere
    for bad, words in (({"model_name": "google/t5gemma-2b-2b-ul2"}, "unknown T5Gemma model"),
                       ({"padding_mode": "mean"}, "padding_mode"), ({"temperature": 1}, "unknown T5Gemma options")):
        with pytest.raises(ValueError, match=words):
            sa3_config_from_dict(tiny_sa3_config(prompt=bad))


@pytest.fixture(scope="module")
def tiny_sa3_with_text(tmp_path_factory):
    """A tiny SA3 folder with a T5Gemma prompt conditioner (its projection in model.safetensors, as the
    reference saves it), and a tiny T5Gemma encoder folder."""
    pytest.importorskip("transformers", reason="prompts need the 'text' extra (transformers)")
    from safetensors.torch import load_file, save_file

    from musicguide.models.folder import save_model_folder
    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, tiny_sa3_config

    root = tmp_path_factory.mktemp("sa3-text")
    encoder = bench().build_tiny_t5gemma(root / "t5gemma")
    torch.manual_seed(0)
    save_model_folder(SA3Model(sa3_config_from_dict(tiny_sa3_config(prompt={"max_length": 12}))), root / "model")
    weights = load_file(root / "model" / "model.safetensors")
    weights["conditioner.conditioners.prompt.proj_out.weight"] = torch.randn(32, 768) * 0.05
    weights["conditioner.conditioners.prompt.proj_out.bias"] = torch.zeros(32)
    save_file(weights, root / "model" / "model.safetensors")
    return root / "model", encoder


def test_a_prompt_edits_with_an_sa3_model_as_its_reference_guides(tiny_sa3_with_text, tmp_path, monkeypatch, capsys):
    """--prompt with SA3: the T5Gemma tokens reach the model (the output moves), the default scale is
    the reference's 1 and --cfg runs the projected CFG; the sidecar says so; the rest stays exact."""
    import soundfile as sf

    from conftest import run_cli, synth_song

    folder, encoder = tiny_sa3_with_text
    monkeypatch.setenv("MUSICGUIDE_TEXT_ENCODER", str(encoder))
    song = tmp_path / "song.wav"
    sf.write(song, synth_song(12.0), 44100, subtype="PCM_16")
    outputs = {}
    for name, extra in (("plain", []), ("prompt", ["--prompt", "warm analog pad"]),
                        ("cfg", ["--prompt", "warm analog pad", "--cfg", "3"]),
                        ("negative", ["--prompt", "warm analog pad", "--negative-prompt", "soft piano", "--cfg", "3"])):
        out = tmp_path / f"{name}.wav"
        code, _, stderr = run_cli(["infill", song, "--start", "5", "--end", "7", "--model", folder, "--steps", "2",
                                   "--seed", "1", "-q", "-o", out, *extra], monkeypatch, capsys)
        assert code == 0, stderr
        outputs[name], _ = sf.read(out, dtype="int16")
        original, _ = sf.read(song, dtype="int16")
        for span in (slice(0, 4 * 44100), slice(8 * 44100, None)):
            assert (outputs[name][span] == original[span]).all(), name
    region = slice(5 * 44100, 7 * 44100)
    for a, b in (("plain", "prompt"), ("prompt", "cfg"), ("cfg", "negative")):
        assert not (outputs[a][region] == outputs[b][region]).all(), (a, b)
    text = json.loads((tmp_path / "prompt.json").read_text())["text"]
    assert text["cfg_scale"] == 1.0 and text["cfg_rule"] == "adaptive projection"
    assert text["text_encoder"]["repo"] == "google/t5gemma-b-b-ul2"
    assert json.loads((tmp_path / "cfg.json").read_text())["text"]["cfg_scale"] == 3


def test_an_infill_gives_the_model_its_own_inpainting_condition(tiny_sa3, monkeypatch):
    """The known frames (and only those) are marked, and hold the encoded context; the gap's are zero."""
    from conftest import synth_song
    from musicguide import edit
    from musicguide.models.folder import load_model_folder
    from musicguide.models.sa3 import SA3Model

    model = load_model_folder(tiny_sa3)
    seen = []
    real = SA3Model.denoise

    def spy(self, x, t, **kwargs):
        seen.append(kwargs.get("inpaint"))
        return real(self, x, t, **kwargs)

    monkeypatch.setattr(SA3Model, "denoise", spy)
    song = torch.from_numpy(synth_song(12.0).T.copy())
    result = edit.infill(model, song, 5 * 44100, 7 * 44100, edit.SamplerSettings(steps=2, seed=1))
    window = result.windows[0]
    mask, masked = seen[0]
    free = slice(*window.free)
    assert mask.shape == (1, 1, window.length // 256) and not mask[..., free].any()
    assert mask.sum() >= mask.shape[-1] - (window.free[1] - window.free[0]) - 2 * model.encoder_leak_frames()
    assert not masked[..., ~mask[0, 0].bool()].any() and masked[..., mask[0, 0].bool()].abs().sum() > 0
    assert all(m is not None for m in seen) and len(seen) == 2


def _spy_on_denoise(monkeypatch) -> list:
    from musicguide.models.sa3 import SA3Model

    seen, real = [], SA3Model.denoise

    def spy(self, x, t, **kwargs):
        seen.append((x.shape[-1], kwargs.get("seconds_total"), kwargs.get("inpaint")))
        return real(self, x, t, **kwargs)

    monkeypatch.setattr(SA3Model, "denoise", spy)
    return seen


def _spy_on_grid(monkeypatch) -> list:
    from musicguide import edit

    grids, real = [], edit.sampling_times

    def spy(schedule, steps, t_max, frames=None):
        grids.append(frames)
        return real(schedule, steps, t_max, frames=frames)

    monkeypatch.setattr(edit, "sampling_times", spy)
    return grids


def test_a_song_that_ends_in_the_window_gets_the_reference_headroom(tiny_sa3, monkeypatch):
    """As stable-audio-3's generate sizes it: seconds_total is the song's length, the latent
    sequence that plus 6 s (up to the model's window), the headroom unknown to the inpainting
    condition, the time grid shifted by the audio's frames; the result is the song's length, exact
    outside the edit."""
    from conftest import synth_song
    from musicguide import edit
    from musicguide.models.folder import load_model_folder

    model = load_model_folder(tiny_sa3)
    seen, grids = _spy_on_denoise(monkeypatch), _spy_on_grid(monkeypatch)
    song = torch.from_numpy(synth_song(2.0).T.copy())
    result = edit.infill(model, song, round(0.8 * 44100), round(1.2 * 44100), edit.SamplerSettings(steps=2, seed=1))
    audio_frames = math.ceil(int(2.0 * 44100) / 256)  # the reference's effective length
    sampled = min(audio_frames + int(6.0 * 44100 / 256), model.max_frames)
    assert sampled > audio_frames + 1
    frames, seconds_total, (mask, _) = seen[0]
    assert frames == sampled and seconds_total == pytest.approx(2.0)
    assert not mask[..., audio_frames:].any() and mask[..., : audio_frames // 4].all()
    assert grids == [audio_frames]
    assert result.windows[0].length == sampled * 256
    edited = result.songs[0]
    assert edited.shape == song.shape
    assert torch.equal(edited[:, : round(0.7 * 44100)], song[:, : round(0.7 * 44100)])
    assert torch.equal(edited[:, round(1.3 * 44100):], song[:, round(1.3 * 44100):])

    seen.clear(), grids.clear()
    edit.generate(model, 2.0, edit.SamplerSettings(steps=2, seed=1))
    assert seen[0][:2] == (sampled, 2.0) and grids == [audio_frames]


def test_a_window_inside_a_longer_song_is_told_how_much_audio_follows(tiny_sa3, monkeypatch):
    """seconds_total counts from the window's start (the model sees no seconds_start); the audio
    fills the window, so there is no headroom and the grid is the window's."""
    from conftest import synth_song
    from musicguide import edit
    from musicguide.models.folder import load_model_folder

    model = load_model_folder(tiny_sa3)
    seen, grids = _spy_on_denoise(monkeypatch), _spy_on_grid(monkeypatch)
    song = torch.from_numpy(synth_song(20.0).T.copy())
    result = edit.infill(model, song, 10 * 44100, 11 * 44100, edit.SamplerSettings(steps=2, seed=1))
    window = result.windows[0]
    frames, seconds_total, (mask, _) = seen[0]
    assert frames == window.length // 256 and grids == [frames]
    assert seconds_total == pytest.approx((20 * 44100 - window.at) / 44100)
    assert mask[..., -1].all()  # the last frame is context, not headroom


def test_the_registry_lists_the_sa3_models_as_gated_hub_entries(monkeypatch):
    from musicguide.errors import UserError
    from musicguide.registry import load_registry, resolve_model

    entries = load_registry()
    for name, repo in (("sa3-small-music", "stabilityai/stable-audio-3-small-music"),
                       ("sa3-small-sfx", "stabilityai/stable-audio-3-small-sfx"),
                       ("sa3-medium", "stabilityai/stable-audio-3-medium")):
        entry = entries[name]
        assert entry.source == "hub" and entry.repo == repo and entry.gated
        assert "MIT" in entry.license and "Community License" in entry.license
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        resolve_model("sa3-small-music")


@pytest.mark.slow
def test_a_full_shape_sa3_small_runs_on_a_cpu():
    """SA3 Small's shape (reconstructed: models.sa3.sa3_small_config), random weights: the parameter
    counts near the model card's (SAME-S 266 M, DiT 433 M), and a 6 s round trip and one network
    forward in float32 on the CPU (about 30 s and 3 GB here)."""
    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, sa3_small_config

    torch.manual_seed(0)
    model = SA3Model(sa3_config_from_dict(sa3_small_config())).eval().requires_grad_(False)
    millions = lambda module: sum(p.numel() for p in module.parameters()) / 1e6  # noqa: E731
    assert 240 < millions(model.vae) < 290 and 400 < millions(model.dit) < 460
    assert model.downsampling_ratio == 4096 and model.latent_channels == 256 and model.max_frames == 1292
    audio = torch.randn(1, 2, 4096 * 64) * 0.1
    with torch.no_grad():
        latents = model.encode(audio)
        decoded = model.decode(latents)
        out = model.denoise(latents, 0.5, seconds_total=6.0)
    assert latents.shape == (1, 256, 64) and decoded.shape == audio.shape and out.shape == latents.shape
    assert all(torch.isfinite(t).all() for t in (latents, decoded, out))


@pytest.mark.slow
def test_evaluate_reports_the_inpainting_condition_alone_beside_guidance(tiny_sa3, tmp_path):
    """The bench for real SA3 weights is `musicguide evaluate` (docs/models.md): for a model with an
    inpainting condition it adds the condition alone and the condition with guidance to the rows."""
    import soundfile as sf

    from conftest import synth_song
    from musicguide.cli.evaluation import run_evaluate
    from musicguide.evaluate.clips import Protocol

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        sf.write(clips / f"{i}.wav", synth_song(6.5, seed=i), 44100, subtype="PCM_16")
    protocol = Protocol(clip_seconds=3.0, gap_seconds=0.6, clips_per_file=1)
    report = run_evaluate(clips, str(tiny_sa3), tmp_path / "r.md", steps=2, n_clips=2, device="cpu", quiet=True,
                          protocol=protocol, tasks=["infill"],
                          variant_names=["inpainting condition alone", "inpainting condition + guidance"])
    rows = report.to_dict()
    text = json.dumps(rows)
    assert "inpainting condition alone" in text and "inpainting condition + guidance" in text
    assert (tmp_path / "r.md").read_text().count("inpainting condition") >= 2


def test_windowed_attention_in_chunks_equals_one_band_masked_attention():
    import torch.nn.functional as F

    from musicguide.models.sa3_transformer import band_mask, windowed_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8) for _ in range(3))
    for window in ((3, 2), (0, 7), (60, 60)):
        whole = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(range(50), range(50), window, "cpu", q.dtype))
        assert torch.allclose(windowed_attention(q, k, v, window, chunk=7), whole, atol=1e-6), window


@pytest.mark.parametrize("shape, same, dit", [("sa3_small_config", 266e6, 433e6), ("sa3_medium_config", 1.7e9, 1.4e9)])
def test_the_reconstructed_shapes_land_on_the_model_cards_counts(shape, same, dit):
    from musicguide.models import sa3

    with torch.device("meta"):
        model = sa3.SA3Model(sa3.sa3_config_from_dict(getattr(sa3, shape)()))
    count = lambda part: sum(p.numel() for p in part.parameters())  # noqa: E731
    assert count(model.pretransform) == pytest.approx(same, rel=0.06)
    assert count(model.model) == pytest.approx(dit, rel=0.06)


@pytest.mark.slow
def test_the_speed_bench_runs_and_writes_its_table(tmp_path):
    """bench/sa3_speed.py, as a GPU lease would run it (`--out`), on the tiny shape, musicguide's side."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MUSICGUIDE_SA3_REFERENCE_PYTHON"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "sa3_speed.py"), "--shape", "tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "sa3_speed.md").read_text()
    assert table.startswith("tiny SA3 shape") and "| musicguide |" in table
