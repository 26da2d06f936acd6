"""The model family: config parsing, VAE and DiT shapes, conditioning, model folders.

SAO 1.0 is built on the `meta` device (shapes and parameter counts without allocating 1.2B
parameters); everything that computes numbers uses the tiny random model or small variants of it.
Agreement with the reference implementation itself is tests/test_conformance.py's job.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from musicguide.errors import UserError
from musicguide.models import (
    LatentDiffusion,
    ModelConfig,
    build_model,
    load_model_folder,
    save_model_folder,
    tiny_random_config,
)
from musicguide.models.vae import Snake

SAO_CONFIG = json.loads((Path(__file__).parent / "data" / "sao_reference_keys.json").read_text())["config"]


def seeded_tiny(seed: int = 0, config: ModelConfig | None = None) -> LatentDiffusion:
    torch.manual_seed(seed)
    return build_model(config or tiny_random_config())


def with_text_conditioner(config: ModelConfig) -> ModelConfig:
    """The tiny config with a T5 prompt conditioner in front of the timing tokens, as in SAO."""
    data = config.to_dict()
    data["model"]["conditioning"]["configs"].insert(
        0, {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 6}})
    data["model"]["diffusion"]["cross_attention_cond_ids"].insert(0, "prompt")
    return ModelConfig.from_dict(data)


@pytest.fixture(scope="module")
def sao_meta() -> LatentDiffusion:
    with torch.device("meta"):
        return build_model(ModelConfig.from_dict(SAO_CONFIG))


@pytest.fixture(scope="module")
def tiny() -> LatentDiffusion:
    return seeded_tiny()


# ---- Stable Audio Open 1.0, on the meta device


def test_sao_vae_shapes_and_latent_rate(sao_meta: LatentDiffusion) -> None:
    assert (sao_meta.sample_rate, sao_meta.audio_channels, sao_meta.latent_channels) == (44100, 2, 64)
    assert sao_meta.downsampling_ratio == 2048
    assert sao_meta.max_frames == 1024  # 2097152 samples = 47.55 s
    assert sao_meta.sample_rate / sao_meta.downsampling_ratio == pytest.approx(21.53, abs=0.01)  # latent frames/s
    with torch.device("meta"):
        latents = sao_meta.encode(torch.empty(2, 2, 5 * 2048))
        assert latents.shape == (2, 64, 5)
        assert sao_meta.decode(latents).shape == (2, 2, 5 * 2048)
        assert sao_meta.denoise(torch.empty(2, 64, 17), 0.5).shape == (2, 64, 17)
    assert sao_meta.objective == "v" and sao_meta.schedule.name == "v"


def test_sao_parameter_counts_match_the_published_figures(sao_meta: LatentDiffusion) -> None:
    """Stable Audio Open paper (Evans et al. 2024, arXiv 2407.14358): autoencoder 156M, DiT 1057M
    parameters (T5 is not part of the checkpoint). The figures are rounded to the million, so the
    tolerance is half a million."""
    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(sao_meta.pretransform) == pytest.approx(156e6, abs=0.5e6)
    assert count(sao_meta.model) == pytest.approx(1057e6, abs=0.5e6)


def test_sao_null_text_token_count_comes_from_the_config() -> None:
    config = ModelConfig.from_dict(SAO_CONFIG)
    assert [c.id for c in config.conditioning.texts] == ["prompt"]
    assert config.conditioning.text("prompt").max_length == 128
    assert config.diffusion.cross_attention_cond_ids == ("prompt", "seconds_start", "seconds_total")


# ---- config


def test_config_round_trips_through_the_published_layout() -> None:
    sao = ModelConfig.from_dict(SAO_CONFIG)
    written = sao.to_dict()
    assert ModelConfig.from_dict(written) == sao
    assert ModelConfig.from_dict(json.loads(json.dumps(written))) == sao
    # The keys stable-audio-tools reads are where it reads them.
    assert written["model"]["pretransform"]["config"]["encoder"]["config"]["strides"] == [2, 4, 4, 8, 8]
    assert written["model"]["diffusion"]["config"]["embed_dim"] == 1536
    assert written["model"]["diffusion"]["diffusion_objective"] == "v"
    conditioner_ids = [c["id"] for c in written["model"]["conditioning"]["configs"]]
    assert conditioner_ids == ["prompt", "seconds_start", "seconds_total"]
    tiny = tiny_random_config()
    assert ModelConfig.from_dict(tiny.to_dict()) == tiny


def test_config_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(SAO_CONFIG))
    assert ModelConfig.from_json(path) == ModelConfig.from_dict(SAO_CONFIG)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ModelConfig.from_json(path)
    with pytest.raises(UserError, match="not found"):
        ModelConfig.from_json(tmp_path / "absent.json")


def _edited(edit) -> dict:
    data = copy.deepcopy(SAO_CONFIG)
    edit(data)
    return data


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["model"]["pretransform"]["config"]["bottleneck"].update(type="rvq"), "bottleneck.type"),
    (lambda d: d["model"]["pretransform"]["config"]["encoder"].update(type="dac"), "encoder.type"),
    (lambda d: d["model"]["pretransform"].update(type="wavelet"), "model.pretransform.type"),
    (lambda d: d["model"]["diffusion"].update(type="adp_cfg_1d"), "model.diffusion.type"),
    (lambda d: d["model"]["diffusion"].update(diffusion_objective="x0"), "diffusion_objective"),
    (lambda d: d["model"]["conditioning"]["configs"][1].update(type="clap_text"), "configs[1].type"),
    (lambda d: d["model"]["diffusion"]["config"].update(global_cond_type="adaLN"), "global_cond_type"),
    (lambda d: d["model"]["diffusion"]["config"].update(attn_kwargs={"qk_norm": "dyt"}), "attn_kwargs.qk_norm"),
    (lambda d: d["model"]["diffusion"]["config"].update(mystery_option=3), "config.mystery_option"),
    (lambda d: d.update(model_type="diffusion_uncond"), "model_type"),
    (lambda d: d["model"]["pretransform"]["config"].pop("latent_dim"), "latent_dim"),
    (lambda d: d["model"]["pretransform"]["config"]["decoder"]["config"].update(strides=[2, 4, 4, 8, 4]), "strides"),
    (lambda d: d["model"]["diffusion"]["config"].update(global_cond_dim=768), "global_cond_dim"),
    (lambda d: d["model"]["diffusion"].update(global_cond_ids=["seconds_start", "bpm"]), "'bpm'"),
])
def test_unsupported_or_inconsistent_config_names_the_field(edit, field: str) -> None:
    with pytest.raises(UserError) as err:
        ModelConfig.from_dict(_edited(edit))
    assert field in err.value.message
    assert "\n" not in err.value.message


def test_inert_settings_and_trainer_sections_are_accepted() -> None:
    def add_extras(d: dict) -> None:
        d["training"] = {"learning_rate": 1e-4}
        d["model"]["pretransform"]["model_half"] = True
        d["model"]["diffusion"]["config"]["zero_init_branch_outputs"] = True

    assert ModelConfig.from_dict(_edited(add_extras)) == ModelConfig.from_dict(SAO_CONFIG)


# ---- VAE


def test_snake_in_both_parameterisations() -> None:
    """x + sin^2(alpha x) / beta, with alpha and beta stored as logs (Oobleck) or as they are."""
    x = torch.linspace(-3, 3, 7).expand(1, 2, 7)
    log_snake, plain_snake = Snake(2), Snake(2, logscale=False)
    with torch.no_grad():
        log_snake.alpha.copy_(torch.tensor([1.0, 0.5]).log())
        log_snake.beta.copy_(torch.tensor([2.0, 1.0]).log())
        plain_snake.alpha.copy_(torch.tensor([1.0, 0.5]))
        plain_snake.beta.copy_(torch.tensor([2.0, 1.0]))
    expected = x + torch.sin(torch.tensor([1.0, 0.5])[:, None] * x) ** 2 / torch.tensor([2.0, 1.0])[:, None]
    torch.testing.assert_close(log_snake(x), expected)
    torch.testing.assert_close(plain_snake(x), expected)


def test_tiny_vae_encode_decode_shapes(tiny: LatentDiffusion) -> None:
    ratio = tiny.downsampling_ratio
    assert ratio == 1024 and tiny.latent_channels == 8 and tiny.max_frames == 512
    audio = 0.5 * torch.randn(2, 2, 3 * ratio)
    latents = tiny.encode(audio)
    assert latents.shape == (2, 8, 3)
    assert torch.equal(latents, tiny.encode(audio)), "the posterior mean is deterministic"
    decoded = tiny.decode(latents)
    assert decoded.shape == (2, 2, 3 * ratio) and torch.isfinite(decoded).all()
    sampled, kl = tiny.encode(audio, sample=True, return_kl=True)
    assert sampled.shape == latents.shape and not torch.equal(sampled, latents)
    assert kl.ndim == 0 and kl.item() > 0
    with pytest.raises(ValueError, match="multiple"):
        tiny.encode(torch.zeros(1, 2, ratio + 1))
    with pytest.raises(ValueError, match="audio"):
        tiny.encode(torch.zeros(1, 1, ratio))


def test_vae_latent_scale_divides_encoding_and_multiplies_decoding() -> None:
    data = tiny_random_config().to_dict()
    data["model"]["pretransform"]["scale"] = 4.0
    scaled, plain = seeded_tiny(3, ModelConfig.from_dict(data)), seeded_tiny(3)
    audio = torch.randn(1, 2, 2048)
    torch.testing.assert_close(scaled.encode(audio), plain.encode(audio) / 4)
    latents = torch.randn(1, 8, 2)
    torch.testing.assert_close(scaled.decode(latents), plain.decode(4 * latents))


# ---- DiT and conditioning


def test_tiny_dit_forward_shapes_and_conditioning(tiny: LatentDiffusion) -> None:
    x = torch.randn(2, 8, 40)
    out = tiny.denoise(x, torch.tensor([0.2, 0.7]))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert not torch.allclose(out, tiny.denoise(x, 0.5)), "the output depends on t"
    assert not torch.allclose(out[:1], tiny.denoise(x[:1], 0.2, seconds_total=30.0)), "timing conditioning matters"
    # seconds_total defaults to the window's length: 40 frames x 1024 samples at 44.1 kHz.
    torch.testing.assert_close(tiny.denoise(x, 0.3), tiny.denoise(x, 0.3, seconds_total=40 * 1024 / 44100))
    # Past max_val the timing embedding saturates, as in the reference.
    torch.testing.assert_close(tiny.denoise(x, 0.3, seconds_total=600.0), tiny.denoise(x, 0.3, seconds_total=512.0))
    with pytest.raises(ValueError, match="t must be"):
        tiny.denoise(x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="no text conditioner"):
        tiny.denoise(x, 0.5, text_tokens=torch.zeros(2, 3, 32))


def test_null_text_conditioning_equals_all_zero_cross_attention_tokens() -> None:
    """denoise() skips cross-attention for the null conditioning; that must equal feeding the DiT
    the all-zero tokens (prompt and timing) that the reference uses for its unconditional pass."""
    model = seeded_tiny(1, with_text_conditioner(tiny_random_config()))
    x, t = torch.randn(2, 8, 24), torch.tensor([0.25, 0.75])
    zero_tokens = torch.zeros(2, 6 + 2, 32)  # max_length prompt tokens + seconds_start + seconds_total
    timing = model.conditioner.conditioners
    seconds = {"seconds_start": torch.tensor([0.0, 10.0]), "seconds_total": torch.tensor([20.0, 40.0])}
    global_cond = torch.cat([timing[k](v) for k, v in seconds.items()], dim=-1)
    explicit = model.model.model(x, t, cross_attn_cond=zero_tokens, global_cond=global_cond)
    torch.testing.assert_close(model.denoise(x, t, **seconds), explicit, rtol=1e-5, atol=1e-6)
    text = model.denoise(x, t, **seconds, text_tokens=torch.randn(2, 6, 32))
    assert not torch.allclose(text, explicit, atol=1e-3), "real text tokens change the output"


def test_gradient_flows_from_denoise_and_decode_to_x(tiny: LatentDiffusion) -> None:
    x = torch.randn(1, 8, 16, requires_grad=True)
    v = tiny.denoise(x, 0.6)
    x0 = tiny.schedule.x0_hat(x, v, 0.6)
    (grad,) = torch.autograd.grad(tiny.decode(x0).square().mean(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(not p.requires_grad for p in tiny.parameters()), "built frozen: only x needs gradients"


def test_gradient_checkpointing_gives_the_same_output_and_gradient() -> None:
    model = seeded_tiny(2)
    x = torch.randn(1, 8, 12)

    def output_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        xr = x.clone().requires_grad_(True)
        out = model.denoise(xr, 0.4)
        return out.detach(), torch.autograd.grad(out.square().sum(), xr)[0]

    plain = output_and_grad()
    model.set_gradient_checkpointing(True)
    checkpointed = output_and_grad()
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)


def test_rectified_flow_model_uses_the_flow_schedule() -> None:
    data = tiny_random_config().to_dict()
    data["model"]["diffusion"]["diffusion_objective"] = "rf_denoiser"
    model = seeded_tiny(0, ModelConfig.from_dict(data))
    assert model.objective == "rf_denoiser" and model.schedule.name == "rf_denoiser"
    x, out = torch.randn(1, 8, 4), torch.randn(1, 8, 4)
    torch.testing.assert_close(model.schedule.x0_hat(x, out, 0.25), x - 0.25 * out)


# ---- model folders


def test_save_then_load_gives_identical_outputs(tmp_path: Path) -> None:
    model = seeded_tiny(5)
    save_model_folder(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "model_config.json"]
    loaded = load_model_folder(tmp_path / "m")
    assert loaded.config == model.config and not any(m.training for m in loaded.modules())
    assert all(not p.requires_grad for p in loaded.parameters()) and list(loaded.state_dict()) == list(model.state_dict())
    x, audio = torch.randn(1, 8, 8), torch.randn(1, 2, 4096)
    assert torch.equal(loaded.denoise(x, 0.3), model.denoise(x, 0.3))
    assert torch.equal(loaded.encode(audio), model.encode(audio))
    assert torch.equal(loaded.decode(x), model.decode(x))


def test_a_model_loaded_on_the_cpu_owns_aligned_copies_of_its_tensors(tmp_path: Path) -> None:
    """The file's tensors are views of the mapped file at whatever offset the header gives, and an
    unaligned tensor is slower and not even bit-identical through other SIMD paths: on the CPU the
    loader copies each one (in the file's dtype or not) into memory of torch's own, 64-byte aligned."""
    save_model_folder(seeded_tiny(5), tmp_path / "m")
    for dtype in (torch.float32, torch.bfloat16):
        tensors = list(load_model_folder(tmp_path / "m", dtype=dtype).state_dict().values())
        assert tensors and all(t.data_ptr() % 64 == 0 for t in tensors if t.numel())


def test_a_model_loaded_on_another_device_is_moved_there_then_cast(tmp_path: Path) -> None:
    """The loader's path for a GPU (the file's bytes to the device, cast there), run on `meta`, the
    one other device every machine has: every tensor on the device, in the dtype asked for."""
    save_model_folder(seeded_tiny(5), tmp_path / "m", dtype=torch.float16)
    model = load_model_folder(tmp_path / "m", device="meta", dtype=torch.bfloat16)
    tensors = model.state_dict().values()
    assert tensors and {(t.device.type, t.dtype) for t in tensors} == {("meta", torch.bfloat16)}
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_save_in_half_precision_and_load_in_another_dtype(tmp_path: Path) -> None:
    model = seeded_tiny(5)
    save_model_folder(model, tmp_path / "m", dtype=torch.float16)
    assert {t.dtype for t in load_file(tmp_path / "m" / "model.safetensors").values()} == {torch.float16}
    loaded = load_model_folder(tmp_path / "m", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    x = torch.randn(1, 8, 8)
    out = loaded.denoise(x, 0.3)
    assert out.dtype == torch.float32  # returned in the caller's dtype
    torch.testing.assert_close(out, model.denoise(x, 0.3), rtol=0.1, atol=0.1)


def _rewrite_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.fixture
def saved_tiny(tmp_path: Path) -> Path:
    save_model_folder(seeded_tiny(0), tmp_path / "m")
    return tmp_path / "m"


def test_missing_and_unexpected_keys_are_named(saved_tiny: Path) -> None:
    def edit(state: dict) -> None:
        for key in ("pretransform.model.encoder.layers.0.weight_v", "model.model.preprocess_conv.weight"):
            del state[key]
        state["model.model.extra_head.weight"] = torch.zeros(3)

    _rewrite_weights(saved_tiny, edit)
    with pytest.raises(UserError) as err:
        load_model_folder(saved_tiny)
    message = err.value.message
    assert "model.safetensors" in message and "model_config.json" in message
    assert "pretransform.model.encoder.layers.0.weight_v" in message
    assert "model.model.preprocess_conv.weight" in message
    assert "model.model.extra_head.weight" in message
    assert "\n" not in message


def test_many_missing_keys_are_summarised_on_one_line(saved_tiny: Path) -> None:
    weights = load_file(saved_tiny / "model.safetensors")
    transformer_keys = [k for k in weights if k.startswith("model.model.transformer")]
    _rewrite_weights(saved_tiny, lambda s: [s.pop(k) for k in transformer_keys])
    with pytest.raises(UserError) as err:
        load_model_folder(saved_tiny)
    message = err.value.message
    named = [key for key in transformer_keys if key in message]
    assert 1 <= len(named) < len(transformer_keys) and len(message) < 500  # a few named, not all
    assert str(len(transformer_keys) - len(named)) in message  # and how many more
    assert "\n" not in message


def test_wrong_shape_is_named(saved_tiny: Path) -> None:
    _rewrite_weights(saved_tiny, lambda s: s.update({"model.model.postprocess_conv.weight": torch.zeros(8, 8, 3)}))
    with pytest.raises(UserError) as err:
        load_model_folder(saved_tiny)
    assert "model.model.postprocess_conv.weight" in err.value.message and "[8, 8, 3]" in err.value.message


def test_parametrized_weight_norm_names_are_accepted(saved_tiny: Path) -> None:
    """Checkpoints written with torch.nn.utils.parametrizations.weight_norm store original0/1."""
    def rename(state: dict) -> None:
        for key in [k for k in state if k.endswith(("weight_g", "weight_v"))]:
            suffix = "original0" if key.endswith("weight_g") else "original1"
            state[key.rsplit(".", 1)[0] + ".parametrizations.weight." + suffix] = state.pop(key)

    reference = load_model_folder(saved_tiny)
    _rewrite_weights(saved_tiny, rename)
    renamed = load_model_folder(saved_tiny)
    latents = torch.randn(1, 8, 2)
    assert torch.equal(renamed.decode(latents), reference.decode(latents))


def test_text_encoder_projection_keys_are_ignored_by_name(tmp_path: Path) -> None:
    config = with_text_conditioner(tiny_random_config())
    save_model_folder(seeded_tiny(0, config), tmp_path / "m")
    projection = {"conditioner.conditioners.prompt.proj_out.weight": torch.zeros(2, 2)}
    _rewrite_weights(tmp_path / "m", lambda s: s.update(projection))
    assert load_model_folder(tmp_path / "m").config == config
    _rewrite_weights(tmp_path / "m", lambda s: s.update({"conditioner.conditioners.bpm.weight": torch.zeros(2)}))
    with pytest.raises(UserError, match="conditioner.conditioners.bpm.weight"):
        load_model_folder(tmp_path / "m")


def test_missing_files_and_folders_are_user_errors(saved_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_model_folder(tmp_path / "nowhere")
    (saved_tiny / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model_folder(saved_tiny)
    (saved_tiny / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_model_folder(saved_tiny)


def test_a_weights_file_that_cannot_be_opened_is_a_user_error(saved_tiny: Path, monkeypatch) -> None:
    from musicguide.models import folder

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(folder, "TensorFile", refuse)
    with pytest.raises(UserError, match="cannot read .*model.safetensors: Permission denied"):
        load_model_folder(saved_tiny)


def test_the_encoder_leak_of_a_weights_file_is_measured_once(tmp_path, monkeypatch):
    """Issue 22: the leak probe (a few encodes) runs once per weights file, device and dtype, and
    again when the file changes; a model built in memory is measured (once per process)."""
    import os

    from musicguide.models import latent_model

    monkeypatch.setenv("MUSICGUIDE_CACHE_DIR", str(tmp_path / "cache"))
    measured = []
    real = latent_model.measure_encoder_leak
    monkeypatch.setattr(latent_model, "measure_encoder_leak", lambda model: measured.append(1) or real(model))
    folder = tmp_path / "model"
    built = build_model(tiny_random_config())
    save_model_folder(built, folder)
    first = load_model_folder(folder).encoder_leak_frames()
    assert load_model_folder(folder).encoder_leak_frames() == first and len(measured) == 1
    assert load_model_folder(folder, dtype=torch.float64).encoder_leak_frames() == first and len(measured) == 2
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    load_model_folder(folder).encoder_leak_frames()
    assert len(measured) == 3
    assert built.encoder_leak_frames() == built.encoder_leak_frames() == first and len(measured) == 4
