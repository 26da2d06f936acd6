"""Text prompts (musicguide/text.py): the T5 prompt encoder and classifier-free guidance.

Offline, always: without a prompt the denoiser is `model.denoise` on the null conditioning, bit for
bit; CFG scale 1 is the conditional branch; the combination is uncond + scale (cond - uncond); the
guidance gradient through it is finite; the encoder (a tiny random T5 built here) pads, truncates
and zeroes padded tokens; the pinned checkpoint is read from checkpoints.toml and Hub failures are
one-line errors; without `transformers` the error names the extra.

With a reference environment (MUSICGUIDE_REFERENCE_PYTHON, as for tests/test_conformance.py): the
text tokens and the DiT output under CFG equal stable-audio-tools' (bench/conformance.py,
`run_text_conformance`), within 1e-4 relative error.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors.torch import save_file

from musicguide import hub, registry, text
from musicguide.errors import UserError
from musicguide.models import ModelConfig, build_model, tiny_random_config
from musicguide.text import TextEncoder, cfg_denoiser, load_proj_out, require_transformers, text_encoder_entry

REPO = Path(__file__).resolve().parents[1]
TEXT_COMPONENTS = {"text_tokens", "text_mask", "text_tokens_proj_out", "dit_cfg_null", "dit_cfg_negative",
                   "dit_cfg_scale_1", "x0_hat_cfg"}
T5_ENTRY = """
[models."tiny-random"]
source = "builtin"
seed = 0
license = "MIT"
description = "tiny"

[text_encoders."t5-base"]
source = "hub"
repo = "google-t5/t5-base"
revision = "a9723ea7f1b39c1eae772870f3b547bf6ef7e6c1"
files = ["config.json", "model.safetensors", "spiece.model", "tokenizer.json"]
license = "Apache-2.0"
description = "T5-base"
"""


def load_bench_module():
    spec = importlib.util.spec_from_file_location("conformance", REPO / "bench" / "conformance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = load_bench_module()


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, with empty caches: nothing here may reach the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("MUSICGUIDE_CACHE_DIR", str(tmp_path / "musicguide-cache"))
    monkeypatch.delenv("MUSICGUIDE_CHECKPOINTS", raising=False)


def text_model():
    """A tiny SAO-shaped model with a T5 prompt conditioner (random weights, fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model(ModelConfig.from_dict(BENCH.text_cfg_config()))


@pytest.fixture(scope="module")
def model():
    return text_model()


def inputs(model, batch: int = 2, frames: int = 16):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, model.latent_channels, frames, generator=generator)
    width = model.config.conditioning.cond_dim
    cond = torch.randn(1, BENCH.TEXT_MAX_LENGTH, width, generator=generator)
    cond[:, 5:] = 0  # padded, as the encoder leaves them
    negative = torch.randn(1, BENCH.TEXT_MAX_LENGTH, width, generator=generator)
    negative[:, 3:] = 0
    timing = {"seconds_start": torch.tensor([0.0, 10.0])[:batch], "seconds_total": 30.0}
    return x, torch.tensor([0.3, 0.8])[:batch], cond, negative, timing


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance


@pytest.mark.parametrize("which", ["text-model", "tiny-random"])
def test_no_prompt_is_todays_null_conditioning_bit_for_bit(which: str, model) -> None:
    if which == "tiny-random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(tiny_random_config())
    x, t, _, _, timing = inputs(model)
    with torch.no_grad():
        today = model.denoise(x, t, **timing)
        for scale in (1.0, 7.0):
            assert torch.equal(cfg_denoiser(model, None, None, scale, **timing)(x, t), today)
        assert torch.equal(cfg_denoiser(model, None, None, 7.0, **timing)(x, 0.5), model.denoise(x, 0.5, **timing))


def test_a_negative_prompt_without_a_prompt_is_refused(model) -> None:
    _, _, cond, _, _ = inputs(model)
    with pytest.raises(ValueError, match="negative prompt needs a prompt"):
        cfg_denoiser(model, None, cond, 7.0)


@pytest.mark.parametrize("negative", [False, True])
def test_cfg_scale_1_is_the_conditional_branch(model, negative: bool) -> None:
    x, t, cond, neg, timing = inputs(model)
    with torch.no_grad():
        out = cfg_denoiser(model, cond, neg if negative else None, 1.0, **timing)(x, t)
        assert torch.equal(out, model.denoise(x, t, **timing, text_tokens=cond.expand(2, -1, -1)))


def test_cfg_combines_the_branches_on_the_network_output(model) -> None:
    x, t, cond, neg, timing = inputs(model)
    with torch.no_grad():
        conditional = model.denoise(x, t, **timing, text_tokens=cond.expand(2, -1, -1))
        null = model.denoise(x, t, **timing)
        negative = model.denoise(x, t, **timing, text_tokens=neg.expand(2, -1, -1))
        # the null half is the null conditioning itself: exactly today's denoise
        assert torch.equal(cfg_denoiser(model, cond, None, 6.0, **timing)(x, t), null + (conditional - null) * 6.0)
        assert torch.equal(cfg_denoiser(model, cond, None, 0.0, **timing)(x, t), null)
        # with a negative prompt both halves share one batched pass: equal up to float rounding
        torch.testing.assert_close(cfg_denoiser(model, cond, neg, 6.0, **timing)(x, t),
                                   negative + (conditional - negative) * 6.0, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(null, conditional, atol=1e-3)  # the prompt matters in this model
        assert not torch.allclose(null, negative, atol=1e-3)


def test_cfg_takes_per_row_tokens(model) -> None:
    x, t, cond, neg, timing = inputs(model)
    rows = torch.cat([cond, neg])  # a different prompt per row
    with torch.no_grad():
        out = cfg_denoiser(model, rows, None, 3.0, **timing)(x, t)
        for i in range(2):
            one = {"seconds_start": timing["seconds_start"][i:i + 1], "seconds_total": timing["seconds_total"]}
            expected = cfg_denoiser(model, rows[i:i + 1], None, 3.0, **one)(x[i:i + 1], t[i:i + 1])
            torch.testing.assert_close(out[i:i + 1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cond_tokens"):
        cfg_denoiser(model, torch.cat([cond] * 3), None, 3.0, **timing)(x, t)


@pytest.mark.parametrize("negative", [False, True])
def test_the_guidance_gradient_through_cfg_is_finite(model, negative: bool) -> None:
    x, t, cond, neg, timing = inputs(model)
    x = x.clone().requires_grad_(True)
    out = cfg_denoiser(model, cond, neg if negative else None, 7.0, **timing)(x, t)
    x0 = model.schedule.x0_hat(x, out, t)  # what the samplers read off the CFG output
    (grad,) = torch.autograd.grad(x0.square().mean(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_scales_are_refused(model) -> None:
    _, _, cond, _, _ = inputs(model)
    for scale in (float("nan"), float("inf"), "7", True):
        with pytest.raises(ValueError, match="CFG scale"):
            cfg_denoiser(model, cond, None, scale)


# ----------------------------------------------------------------------------------------------
# The encoder (a tiny random T5, built offline)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers", reason="the 'text' extra (transformers) is not installed")
    folder = tmp_path_factory.mktemp("t5") / "tiny-t5"
    BENCH._build_tiny_t5(folder)
    return folder


def test_the_encoder_pads_truncates_and_zeroes_padding(tiny_t5: Path) -> None:
    length = BENCH.TEXT_MAX_LENGTH
    encoder = TextEncoder.from_folder(tiny_t5, max_length=length, output_dim=BENCH.TEXT_WIDTH)
    tokens, mask = encoder.encode(BENCH.TEXT_PROMPTS)
    assert tokens.shape == (3, length, BENCH.TEXT_WIDTH) and tokens.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == (3, length)
    lengths = mask.sum(dim=1).tolist()
    assert 1 < lengths[0] < length and lengths[1] == 1 and lengths[2] == length  # plain, empty, over-long
    assert (tokens[~mask] == 0).all() and (tokens[mask].abs().sum(dim=-1) > 0).all()
    assert torch.equal(tokens, tokens.half().float())  # computed in float16, as the reference does
    ids = encoder.tokenizer(BENCH.TEXT_PROMPTS[2], truncation=True, max_length=length)["input_ids"]
    assert ids[-1] == encoder.tokenizer.eos_token_id  # truncation keeps </s>
    assert torch.equal(encoder(BENCH.TEXT_PROMPTS[0]), tokens[:1])
    with pytest.raises(TypeError):
        encoder.encode("one string, not a list")


def test_the_encoder_projects_when_the_checkpoint_has_a_proj_out(tiny_t5: Path, tmp_path: Path) -> None:
    _save_weights(tmp_path, {})
    assert load_proj_out(tmp_path, "prompt") is None  # SAO: no projection, T5 is as wide as cond_dim
    proj = torch.nn.Linear(BENCH.TEXT_WIDTH, 24)
    _save_weights(tmp_path, {f"conditioner.conditioners.prompt.proj_out.{k}": v for k, v in proj.state_dict().items()})
    loaded = load_proj_out(tmp_path, "prompt")
    encoder = TextEncoder.from_folder(tiny_t5, max_length=8, output_dim=24, proj_out=loaded)
    tokens, mask = encoder.encode(["solo piano"])
    assert tokens.shape == (1, 8, 24) and (tokens[~mask] == 0).all()
    with pytest.raises(UserError, match="no projection"):
        TextEncoder.from_folder(tiny_t5, max_length=8, output_dim=24)


def _save_weights(folder: Path, state: dict) -> None:
    """A model checkpoint with one DiT tensor and `state`."""
    save_file({"model.dummy": torch.zeros(1), **{k: v.contiguous() for k, v in state.items()}},
              str(folder / "model.safetensors"))


def test_the_encoder_for_a_model_uses_its_conditioner(tiny_t5: Path, model) -> None:
    encoder = TextEncoder.for_model(model, encoder_folder=tiny_t5)
    assert encoder.max_length == BENCH.TEXT_MAX_LENGTH and encoder.output_dim == model.config.conditioning.cond_dim
    tokens = encoder("solo piano")
    x, t, _, _, timing = inputs(model)
    with torch.no_grad():
        assert torch.isfinite(cfg_denoiser(model, tokens, encoder(""), 6.0, **timing)(x, t)).all()
    with torch.random.fork_rng(devices=[]):
        plain = build_model(tiny_random_config())
    with pytest.raises(UserError, match="needs a model with a text conditioner"):
        TextEncoder.for_model(plain, encoder_folder=tiny_t5)


def test_encode_prompts_gives_the_tokens_cfg_takes(tiny_t5: Path, model) -> None:
    assert text.encode_prompts(model, None) == (None, None)  # no prompt: nothing is loaded
    with pytest.raises(UserError, match="`negative_prompt` needs `prompt`"):
        text.encode_prompts(model, None, "noise")
    cond, uncond = text.encode_prompts(model, "solo piano", "distorted guitar", encoder_folder=tiny_t5)
    encoder = TextEncoder.for_model(model, encoder_folder=tiny_t5)
    assert torch.equal(cond, encoder("solo piano")) and torch.equal(uncond, encoder("distorted guitar"))
    assert text.encode_prompts(model, "solo piano", encoder_folder=tiny_t5)[1] is None


@pytest.mark.slow
def test_without_transformers_the_error_is_one_line_and_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    for attempt in (require_transformers,
                    lambda: TextEncoder.from_folder(tmp_path, max_length=8, output_dim=8),
                    lambda: TextEncoder.for_model(text_model(), encoder_folder=tmp_path)):
        with pytest.raises(UserError) as raised:
            attempt()
        assert "musicguide[text]" in str(raised.value) and "\n" not in str(raised.value)


# ----------------------------------------------------------------------------------------------
# The pinned checkpoint


def test_the_entry_is_read_from_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints.toml"
    path.write_text(T5_ENTRY)
    monkeypatch.setenv("MUSICGUIDE_CHECKPOINTS", str(path))
    entry = text_encoder_entry("t5-base")
    assert (entry.repo, entry.revision) == ("google-t5/t5-base", "a9723ea7f1b39c1eae772870f3b547bf6ef7e6c1")
    assert entry.files == ("config.json", "model.safetensors", "spiece.model", "tokenizer.json")
    with pytest.raises(UserError, match="pins no text encoder 't5-large'") as raised:
        text_encoder_entry("t5-large")
    assert "t5-base" in (raised.value.hint or "")
    path.write_text(T5_ENTRY.replace('files = ["config.json", ', 'files = ['))
    with pytest.raises(UserError, match="'files'"):
        text_encoder_entry("t5-base")


def test_the_shipped_registry_pins_t5_base() -> None:
    import tomllib

    document = tomllib.loads((REPO / "checkpoints.toml").read_text())
    if "text_encoders" not in document:
        pytest.skip("checkpoints.toml's [text_encoders] table is still commented out "
                    "(it waits for musicguide/registry.py to accept that table)")
    entry = text_encoder_entry("t5-base", REPO / "checkpoints.toml")
    assert len(entry.revision) == 40 and set(entry.sha256) == set(entry.files)
    assert registry.load_registry(REPO / "checkpoints.toml")  # the model registry still loads


@pytest.mark.parametrize("cause, offline, phrase", [
    (OfflineModeIsEnabled("offline mode is enabled"), True, "HF_HUB_OFFLINE"),
    (ConnectionError("name resolution failed"), False, "cannot reach the Hugging Face Hub"),
])
def test_hub_failures_are_one_line_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               cause: Exception, offline: bool, phrase: str) -> None:
    path = tmp_path / "checkpoints.toml"
    path.write_text(T5_ENTRY)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)

    def failing_download(**kwargs):
        error = LocalEntryNotFoundError("cannot find the requested files in the local cache")
        error.__cause__ = cause
        raise error

    monkeypatch.setattr(hub, "hf_hub_download", failing_download)
    with pytest.raises(UserError) as raised:
        text.download_text_encoder("t5-base", registry_path=path)
    assert phrase in raised.value.message and "google-t5/t5-base" in raised.value.message
    assert "\n" not in str(raised.value)


def test_downloads_are_checked_against_their_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in ("config.json", "model.safetensors", "spiece.model", "tokenizer.json"):
        (snapshot / name).write_text(name)
    path = tmp_path / "checkpoints.toml"
    path.write_text(T5_ENTRY + '\n[text_encoders."t5-base".sha256]\n"config.json" = "' + "0" * 64 + '"\n')
    monkeypatch.setattr(hub, "hf_hub_download", lambda **kwargs: str(snapshot / kwargs["filename"]))
    with pytest.raises(UserError, match="sha256 mismatch for .*config.json"):
        text.download_text_encoder("t5-base", registry_path=path)
    import hashlib

    digest = hashlib.sha256(b"config.json").hexdigest()
    path.write_text(T5_ENTRY + '\n[text_encoders."t5-base".sha256]\n"config.json" = "' + digest + '"\n')
    assert text.download_text_encoder("t5-base", registry_path=path) == snapshot


# ----------------------------------------------------------------------------------------------
# Conformance with stable-audio-tools


@pytest.mark.conformance
@pytest.mark.slow
def test_text_tokens_and_cfg_output_equal_the_reference(tmp_path: Path) -> None:
    reference_python = os.environ.get("MUSICGUIDE_REFERENCE_PYTHON")
    if not reference_python:
        pytest.skip("set MUSICGUIDE_REFERENCE_PYTHON to a stable-audio-tools environment's python "
                    "(bash ../shared/tools/reference-env.sh /tmp/refenv) to compare with the reference")
    pytest.importorskip("transformers", reason="the 'text' extra (transformers) is not installed")
    shims = Path(os.environ.get("MUSICGUIDE_REFERENCE_SHIMS", BENCH.DEFAULT_SHIMS))
    assert shims.is_dir(), f"reference shims not found at {shims} (set MUSICGUIDE_REFERENCE_SHIMS)"
    try:
        rows = BENCH.run_text_conformance(reference_python, shims, workdir=tmp_path)
    except BENCH.ReferenceSetupError as error:
        pytest.skip(str(error))
    print("\n" + BENCH.format_table(rows))
    assert sorted(name for _, name, *_ in rows) == sorted(TEXT_COMPONENTS)
    assert [(name, rel) for _, name, _, rel in rows if not rel <= BENCH.TOLERANCE] == []


def test_the_cli_prompt_reaches_the_model_and_the_sidecar(tiny_t5: Path, tmp_path: Path, song_wav: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """End to end: --prompt/--negative-prompt/--cfg through `musicguide infill` on a model folder with
    a T5 conditioner, the encoder taken from a local folder (MUSICGUIDE_TEXT_ENCODER)."""
    import json

    from musicguide import cli
    from musicguide.models.folder import save_model_folder

    folder = tmp_path / "text-model"
    save_model_folder(text_model(), folder)
    monkeypatch.setenv("MUSICGUIDE_TEXT_ENCODER", str(tiny_t5))

    def infill(name: str, *prompt: str) -> bytes:
        out = tmp_path / f"{name}.wav"
        monkeypatch.setattr(sys, "argv", ["musicguide", "infill", str(song_wav), "--start", "2", "--end", "2.05", "-o",
                                          str(out), "--model", str(folder), "--device", "cpu", "--steps", "2",
                                          "--seed", "1", "--quiet", *prompt])
        with pytest.raises(SystemExit) as done:
            cli.main()
        assert done.value.code == 0, capsys.readouterr().err
        return out.read_bytes()

    plain = infill("plain")
    prompted = infill("prompted", "--prompt", "calm strings", "--negative-prompt", "drums", "--cfg", "3")
    assert prompted != plain
    settings = json.loads((tmp_path / "prompted.json").read_text())["text"]
    assert settings["prompt"] == "calm strings" and settings["negative_prompt"] == "drums" and settings["cfg_scale"] == 3
    assert "text" not in json.loads((tmp_path / "plain.json").read_text())
    monkeypatch.setattr(sys, "argv", ["musicguide", "infill", str(song_wav), "--start", "2", "--end", "3",
                                      "--cfg", "3", "--model", str(folder)])
    with pytest.raises(SystemExit) as refused:
        cli.main()
    assert refused.value.code == 2 and "need --prompt" in capsys.readouterr().err
