"""Text prompts: the prompt encoders and classifier-free guidance (CFG), as each family's reference has them.

Stable Audio Open 1.0 and Small are conditioned on a prompt through a T5 text conditioner
(`{"type": "t5", "config": {"t5_model_name": "t5-base", "max_length": ...}}` in model_config.json).
The encoder is not in the model's checkpoint: like the reference, we fetch it from the Hub
(`google-t5/t5-base`, pinned in checkpoints.toml) and run it once per prompt.

    cond, uncond = encode_prompts(model, "warm analog pads, 120 bpm", "low quality", model_folder=folder)
    # [1, max_length, cond_dim] each (uncond None without a negative prompt; both None without a
    # prompt). Loads t5-base (pinned in checkpoints.toml) on the model's device and frees it again.
    denoiser = cfg_denoiser(model, cond, uncond, 6.0, seconds_start=0.0, seconds_total=47.0)
    v = denoiser(x_t, t)                                      # what the guided samplers call

What matches stable-audio-tools 0.0.19 (`T5Conditioner`, `DiffusionTransformer.forward`), checked
against it in bench/conformance.py (the "text-cfg" rows):

- Tokenizer: `AutoTokenizer.from_pretrained`, called with truncation, padding="max_length" and the
  config's max_length (an over-long prompt keeps its first max_length - 1 pieces and `</s>`).
- Encoder: `T5EncoderModel`, eval mode, cast as a whole to float16 (the reference always runs T5 in
  half precision, on CPU too; its autocast context is a no-op), with the attention mask.
- Output: `last_hidden_state`, through `proj_out` when the conditioner has one (T5's width differs
  from cond_dim, or project_out; its weights are in the model checkpoint), then multiplied by the
  mask, so padded positions are exact zeros, as a float32 tensor. The mask itself is not passed on:
  the reference's DiT drops cross-attention masks ("temporarily disabled"), so the zero tokens
  take part in attention, and so they do here.
- CFG: one forward pass on the batch [conditional; unconditional] and
  `uncond + (cond - uncond) * scale` on the network output (v, or the flow velocity). Scale 1 is a
  single conditional pass. The unconditional half is the negative prompt's cross-attention tokens
  (its T5 tokens and the same timing tokens) when one is given, else the null conditioning: the
  whole cross-attention input zeroed, timing tokens included, with the global (timing)
  conditioning kept. That null half is exactly `LatentDiffusion.denoise` without text tokens; it
  runs as its own pass (the DiT skips cross-attention for it, see `denoise`), because the two
  halves cannot share one `denoise` call. No CFG rescale (the reference's scale_phi is 0).

x̂0 is read off the combined output by the sampler, and the guidance gradient flows through it:
`cfg_denoiser` is differentiable in x. Without a prompt it is `model.denoise` itself, so editing
without a prompt is today's null conditioning, bit for bit.

Stable Audio 3 (stable-audio-3 636f906, `T5GemmaConditioner` and `DiffusionTransformer.forward`;
checked in bench/conformance_sa3.py) differs in four places:

- Encoder: the encoder half of T5Gemma (`google/t5gemma-b-b-ul2`, 768 wide, pinned in
  checkpoints.toml), loaded as the reference loads it (`T5GemmaEncoderModel` with
  `is_encoder_decoder` false, in the dtype transformers gives it: no cast), max_length 128.
- Padding: the config's `padding_mode` ("zero", as above; "none"; "learned", the checkpoint's
  `padding_embedding` at the padded positions).
- CFG: adaptive projected guidance (the reference's default apg_scale 1): on the denoised
  estimates x̂0 = x − t·u of both halves, only the part of their difference orthogonal to the
  conditional x̂0 is added, (scale − 1) times; the output is read back as a velocity.
- The default scale is 1 (the reference's `generate`: the model is post-trained to sample in 8
  steps without CFG), so a prompt costs one pass a step unless `cfg` says otherwise.

The timing tokens follow the prompt's in the cross-attention input, and the inpainting condition
goes to both halves, as the reference batches them.

`transformers` is the optional extra `text` (pip install 'musicguide[text]'); it is imported only
when a prompt is encoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicguide.defaults import DEFAULT_CFG
from musicguide.errors import BadArgument, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# checkpoints.toml: `[text_encoders."t5-base"]`, keyed by the config's t5_model_name.
TEXT_ENCODERS_TABLE = "text_encoders"
# What T5EncoderModel and AutoTokenizer read from a folder (google-t5/t5-base has no tokenizer_config.json).
TEXT_ENCODER_FILES = ("config.json", "model.safetensors", "spiece.model", "tokenizer.json")
_REQUIRED_FILES = ("config.json", "model.safetensors")
# The reference runs T5 in float16 whatever the device (T5Conditioner: `.to(torch.float16)`).
REFERENCE_DTYPE = torch.float16
EXTRA_HINT = "pip install 'musicguide[text]'"
_ENTRY_FIELDS = {"source", "repo", "revision", "files", "sha256", "license", "description", "gated"}

Denoiser = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------
# The optional dependency


def require_transformers() -> Any:
    """The `transformers` module, or a one-line UserError naming the extra that provides it."""
    try:
        import transformers
    except ImportError as error:  # not installed, or installed without what it needs (tokenizers)
        missing = getattr(error, "name", None) or "transformers"
        raise UserError(f"text prompts need the 'transformers' package ({missing} cannot be imported); "
                        f"install the 'text' extra: {EXTRA_HINT}") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """No warnings, log lines or progress bars while loading, as the reference's T5Conditioner."""
    previous_level = logging.root.manager.disable
    logging.disable(logging.ERROR)
    hf_logging = transformers.utils.logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_level)
        if bars:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------
# The pinned checkpoint (checkpoints.toml) and its download


def text_encoder_entry(t5_model_name: str, registry_path: str | os.PathLike[str] | None = None):
    """The `[text_encoders."NAME"]` table of checkpoints.toml as a registry `CheckpointEntry`."""
    from musicguide import registry

    path = Path(registry_path) if registry_path is not None else registry.default_registry_path()
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except OSError as error:
        raise UserError(f"cannot read the model registry {path}: {error.strerror}") from None
    except (ValueError, RecursionError) as error:
        raise UserError(f"model registry {path} is not valid TOML: {' '.join(str(error).split())}") from None
    table = document.get(TEXT_ENCODERS_TABLE, {})
    known = sorted(table) if isinstance(table, dict) else []
    if t5_model_name not in known:
        raise UserError(
            f"{path} pins no text encoder {t5_model_name!r} (a [{TEXT_ENCODERS_TABLE}.\"{t5_model_name}\"] table)",
            hint=f"pinned text encoders: {', '.join(known) or 'none'}")
    entry = table[t5_model_name]

    def fail(problem: str) -> UserError:
        return UserError(f"{path}: text encoder {t5_model_name!r}: {problem}",
                         hint="see the comment above [text_encoders] in checkpoints.toml")

    if not isinstance(entry, dict):
        raise fail("must be a table")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r}")
    if entry.get("source", "hub") != "hub":
        raise fail("'source' must be \"hub\"")
    for key in ("repo", "revision", "license", "description"):
        value = entry.get(key)
        if not isinstance(value, str) or not value.strip() or not value.isprintable():
            raise fail(f"{key!r} must be a non-empty one-line string")
    files = entry.get("files", list(TEXT_ENCODER_FILES))
    if (not isinstance(files, list) or not all(isinstance(f, str) and f and "/" not in f for f in files)
            or not set(_REQUIRED_FILES) <= set(files)):
        raise fail(f"'files' must be a list of file names including {', '.join(_REQUIRED_FILES)}")
    hashes = entry.get("sha256", {})
    if not isinstance(hashes, dict):
        raise fail("'sha256' must be a table of file name = hex digest")
    for filename, digest in hashes.items():
        if filename not in files:
            raise fail(f"'sha256' lists {filename!r}, which is not in 'files'")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise fail(f"sha256 of {filename!r} must be 64 hexadecimal digits")
    gated = entry.get("gated", False)
    if not isinstance(gated, bool):
        raise fail("'gated' must be true or false")
    return registry.CheckpointEntry(
        name=t5_model_name, source="hub", description=entry["description"], license=entry["license"],
        gated=gated, repo=entry["repo"], revision=entry["revision"], files=tuple(files),
        sha256={k: v.lower() for k, v in hashes.items()},
    )


def download_text_encoder(t5_model_name: str, *, token: str | None = None,
                          registry_path: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the pinned encoder in the Hugging Face cache: downloaded if needed, hashes checked.

    Goes through the models' own download (`musicguide.hub`) and its translation of the Hub's errors
    (gated, no network, HF_HUB_OFFLINE and not cached, missing file or revision) into one-line UserErrors."""
    from musicguide.hub import download_hub_files

    return download_hub_files(text_encoder_entry(t5_model_name, registry_path), token, main_file="config.json")


# ----------------------------------------------------------------------------------------------
# The encoder


def text_conditioner(config):
    """The model's text conditioner that feeds its cross-attention (Stable Audio Open's
    `TextConditionerConfig`, Stable Audio 3's `T5GemmaConditionerConfig`), or None."""
    texts = config.cross_attention_texts()
    if len(texts) > 1:
        raise UserError(f"this model has {len(texts)} text conditioners ({', '.join(t.id for t in texts)}); "
                        "musicguide supports one")
    return texts[0] if texts else None


def _conditioner_weights(model_folder: str | os.PathLike[str], prefix: str) -> dict[str, Tensor]:
    from safetensors import safe_open

    with safe_open(Path(model_folder) / "model.safetensors", framework="pt") as weights:
        return {k[len(prefix):]: weights.get_tensor(k) for k in weights.keys() if k.startswith(prefix)}


def load_padding_embedding(model_folder: str | os.PathLike[str], cond_id: str) -> Tensor | None:
    """A "learned" padding mode's embedding [cond_dim] from a model folder's checkpoint
    (`conditioner.conditioners.<id>.padding_embedding`); None if it has none."""
    key = f"conditioner.conditioners.{cond_id}.padding_embedding"
    return _conditioner_weights(model_folder, key).get("")


def load_proj_out(model_folder: str | os.PathLike[str], cond_id: str) -> nn.Linear | None:
    """The text conditioner's output projection from a model folder's checkpoint, where the reference
    keeps it (`conditioner.conditioners.<id>.proj_out.weight/bias`); None if it has none."""
    prefix = f"conditioner.conditioners.{cond_id}.proj_out."
    state = _conditioner_weights(model_folder, prefix)
    if not state:
        return None
    if set(state) != {"weight", "bias"} or state["weight"].ndim != 2:
        raise UserError(f"{model_folder}: {prefix}* must be a linear layer's weight and bias, got {sorted(state)}")
    projection = nn.Linear(state["weight"].shape[1], state["weight"].shape[0], dtype=state["weight"].dtype)
    projection.load_state_dict(state)
    return projection.eval().requires_grad_(False)


def _width(model: nn.Module) -> int:
    """An encoder's output width: T5's d_model, T5Gemma's encoder hidden_size."""
    config = model.config
    return int(config.d_model if hasattr(config, "d_model") else config.encoder.hidden_size)


class TextEncoder:
    """A model's text conditioner (stable-audio-tools' T5Conditioner, stable-audio-3's
    T5GemmaConditioner): prompts -> the tokens its DiT reads.

    `encode` returns (tokens [B, max_length, output_dim] float32, mask [B, max_length] bool), like
    the reference's forward; calling the encoder with one prompt returns its tokens [1, L, D]."""

    def __init__(self, tokenizer: Any, model: nn.Module, *, max_length: int, output_dim: int,
                 proj_out: nn.Module | None = None, padding_mode: str = "zero",
                 padding_embedding: Tensor | None = None):
        hidden = _width(model)
        if proj_out is None and hidden != output_dim:
            raise UserError(f"the text encoder is {hidden} wide but the model's conditioning is {output_dim}, "
                            "and its checkpoint holds no projection (proj_out) between them")
        if padding_mode == "learned" and padding_embedding is None:
            raise UserError("the model's text conditioner pads with a learned embedding, and its checkpoint holds "
                            "none (padding_embedding)")
        self.tokenizer, self.model, self.proj_out = tokenizer, model, proj_out
        self.max_length, self.output_dim = max_length, output_dim
        self.padding_mode, self.padding_embedding = padding_mode, padding_embedding

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], *, max_length: int, output_dim: int, kind: str = "t5",
                    proj_out: nn.Module | None = None, padding_mode: str = "zero",
                    padding_embedding: Tensor | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> TextEncoder:
        """Tokenizer and encoder from a local folder (config.json, model.safetensors, tokenizer files).

        `kind` "t5": T5EncoderModel, cast to `dtype` (default float16, the reference's; float32 is
        offered for checks, not for sampling). "t5gemma": T5GemmaEncoderModel, loaded as the
        reference loads it, in the dtype transformers gives it unless `dtype` is set."""
        transformers = require_transformers()
        folder = Path(folder)
        missing = [name for name in _REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise UserError(f"text encoder folder {folder} has no {missing[0]}")
        if kind not in ("t5", "t5gemma"):
            raise ValueError(f"unknown text encoder kind {kind!r}")
        try:
            with _quiet_transformers(transformers):
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
                if kind == "t5":
                    model = transformers.T5EncoderModel.from_pretrained(str(folder))
                    dtype = REFERENCE_DTYPE if dtype is None else dtype
                else:
                    config = transformers.AutoConfig.from_pretrained(str(folder))
                    config.is_encoder_decoder = False  # as the reference: the encoder half alone
                    model = transformers.T5GemmaEncoderModel.from_pretrained(str(folder), config=config)
                model = model.train(False).requires_grad_(False)
        except (OSError, ValueError, AttributeError) as error:  # a damaged, incomplete or foreign folder
            raise UserError(f"cannot load the text encoder in {folder}: {' '.join(str(error).split())[:300]}") from None
        model = (model if dtype is None else model.to(dtype=dtype)).to(device)
        if proj_out is not None:
            proj_out = proj_out.to(device)
        if padding_embedding is not None:
            padding_embedding = padding_embedding.to(device)
        return cls(tokenizer, model, max_length=max_length, output_dim=output_dim, proj_out=proj_out,
                   padding_mode=padding_mode, padding_embedding=padding_embedding)

    @classmethod
    def for_model(cls, model, *, model_folder: str | os.PathLike[str] | None = None,
                  encoder_folder: str | os.PathLike[str] | None = None, token: str | None = None,
                  device: str | torch.device | None = None) -> TextEncoder:
        """The encoder a loaded `LatentDiffusion` (or a `ModelConfig`) was trained with.

        The encoder comes from `encoder_folder`, or else from the Hub at the revision pinned in
        checkpoints.toml for the config's t5_model_name. `model_folder` is where a projection is
        read from when the conditioner has one (the model's own folder). Runs on `device`
        (default: the model's)."""
        config = getattr(model, "config", model)
        cond = text_conditioner(config)
        if cond is None:
            raise BadArgument("`prompt` needs a model with a text conditioner (Stable Audio Open 1.0 or Small, "
                              "Stable Audio 3); this one has none")
        require_transformers()
        proj_out = load_proj_out(model_folder, cond.id) if model_folder is not None else None
        if cond.project_out and proj_out is None:
            raise UserError(f"the model's text conditioner {cond.id!r} has project_out, but no "
                            f"conditioner.conditioners.{cond.id}.proj_out weights were found (pass the model folder)")
        padding = load_padding_embedding(model_folder, cond.id) if model_folder is not None else None
        folder = encoder_folder
        if folder is None:
            if getattr(cond, "elsewhere", None):
                raise UserError(f"the model's config loads its text encoder from {cond.elsewhere}, which "
                                "checkpoints.toml does not pin",
                                hint="set MUSICGUIDE_TEXT_ENCODER to a local folder holding that encoder")
            folder = download_text_encoder(cond.encoder_name, token=token)
        device = device if device is not None else getattr(model, "device", "cpu")
        encoder = cls.from_folder(folder, kind=cond.kind, max_length=cond.max_length, output_dim=config.cond_dim,
                                  proj_out=proj_out, padding_mode=cond.padding_mode, padding_embedding=padding,
                                  device=device)
        if not cond.project_out and _width(encoder.model) == encoder.output_dim:
            encoder.proj_out = None  # the reference's proj_out is then an Identity, whatever the file holds
        return encoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The conditioner's forward: tokens [B, max_length, output_dim] (float32; where padded, as
        the padding mode says) and the mask [B, max_length]."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("encode takes a list of prompts (strings)")
        encoded = self.tokenizer(list(prompts), truncation=True, max_length=self.max_length,
                                 padding="max_length", return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device).to(torch.bool)
        self.model.eval()
        embeddings = self.model(input_ids=input_ids, attention_mask=attention_mask)["last_hidden_state"]
        if self.proj_out is not None:
            embeddings = self.proj_out(embeddings.to(next(self.proj_out.parameters()).dtype))
        if self.padding_mode == "zero":
            embeddings = embeddings * attention_mask.unsqueeze(-1).float()
        elif self.padding_mode == "learned":
            embeddings = torch.where(attention_mask.unsqueeze(-1), embeddings,
                                     self.padding_embedding.to(embeddings.dtype).expand_as(embeddings))
        return embeddings.float(), attention_mask

    def __call__(self, prompt: str) -> Tensor:
        """One prompt's tokens [1, max_length, output_dim]."""
        return self.encode([prompt])[0]


def encode_prompts(model, prompt: str | None, negative_prompt: str | None = None, *,
                   model_folder: str | os.PathLike[str] | None = None,
                   encoder_folder: str | os.PathLike[str] | None = None,
                   token: str | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(cond_tokens, uncond_tokens) for `cfg_denoiser`, each [1, L, D] on the model's device.

    (None, None) without a prompt, and nothing is loaded. The encoder is loaded for the call and
    released after it; each prompt is encoded on its own, as the reference's conditioner calls do."""
    if prompt is None:
        if negative_prompt is not None:
            raise BadArgument("`negative_prompt` needs `prompt`")
        return None, None
    encoder = TextEncoder.for_model(model, model_folder=model_folder, encoder_folder=encoder_folder, token=token)
    cond = encoder(prompt)
    uncond = None
    if negative_prompt is not None:  # its padded tokens are the null embedding, as the reference's negative mask makes them
        tokens, mask = encoder.encode([negative_prompt])
        uncond = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
    on_cuda = encoder.device.type == "cuda"
    del encoder
    if on_cuda:
        torch.cuda.empty_cache()
    return cond, uncond


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance


def _batched(tokens: Tensor, batch: int, name: str) -> Tensor:
    if tokens.ndim != 3 or tokens.shape[0] not in (1, batch):
        raise ValueError(f"{name} must be [1 or {batch}, tokens, dim], got {list(tokens.shape)}")
    return tokens.expand(batch, -1, -1)


def _twice(value: Any) -> Any:
    """A per-row input for the batch [cond; uncond]: a [B] tensor (or each of a tuple's) repeated,
    a scalar as it is."""
    if isinstance(value, tuple):
        return tuple(_twice(v) for v in value)
    if isinstance(value, Tensor) and value.ndim > 0:
        return torch.cat([value, value])
    return value


def _sigma(t: Tensor | float, x: Tensor) -> Tensor:
    """A rectified flow's noise level σ = t as [B, 1, 1] float32, as the reference's DiT keeps t."""
    return torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0])[:, None, None]


def projected_cfg(x: Tensor, t: Tensor | float, cond_out: Tensor, uncond_out: Tensor, scale: float) -> Tensor:
    """stable-audio-3's CFG with adaptive projection (apg_scale 1), for a rectified flow: on the
    denoised estimates x − σ·u, the difference of the halves less its part along the conditional
    estimate, (scale − 1) times, added to the conditional estimate; returned as a velocity."""
    sigma = _sigma(t, x)
    cond_x0, uncond_x0 = x - cond_out * sigma, x - uncond_out * sigma
    diff, along = (cond_x0 - uncond_x0).float(), F.normalize(cond_x0.float(), dim=[-1, -2])
    orthogonal = (diff - (diff * along).sum(dim=[-1, -2], keepdim=True) * along).to(cond_x0.dtype)
    return (x - (cond_x0 + (scale - 1) * orthogonal)) / sigma


def _combine(model, x: Tensor, t: Tensor | float, cond_out: Tensor, uncond_out: Tensor, scale: float) -> Tensor:
    if getattr(model, "cfg_projection", False):
        return projected_cfg(x, t, cond_out, uncond_out, scale)
    return uncond_out + (cond_out - uncond_out) * scale


def cfg_denoiser(model, cond_tokens: Tensor | None, uncond_tokens: Tensor | None, scale: float,
                 **conditioning: Any) -> Denoiser:
    """denoiser(x, t) -> the network output under classifier-free guidance, as the reference's DiT
    computes it with `cfg_scale=scale` (see the module docstring). Differentiable in x.
    `conditioning`: the rest of `model.denoise`'s inputs (seconds_start, seconds_total, inpaint),
    the same for both halves.

    cond_tokens None (no prompt): `model.denoise` on the null conditioning, unchanged (scale and
    uncond_tokens must then be left out). uncond_tokens None: the null conditioning is the
    unconditional half; otherwise they are a negative prompt's tokens. Tokens are [1 or B, L, D]."""
    if cond_tokens is None:
        if uncond_tokens is not None:
            raise ValueError("a negative prompt needs a prompt")

        def null(x: Tensor, t: Tensor | float) -> Tensor:
            return model.denoise(x, t, **conditioning)

        return null
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale != scale or abs(scale) == float("inf"):
        raise ValueError(f"the CFG scale must be a finite number, got {scale!r}")
    scale = float(scale)

    if scale == 1.0:  # the reference skips CFG: one conditional pass
        def conditional(x: Tensor, t: Tensor | float) -> Tensor:
            return model.denoise(x, t, **conditioning, text_tokens=_batched(cond_tokens, x.shape[0], "cond_tokens"))

        return conditional

    def guided(x: Tensor, t: Tensor | float) -> Tensor:
        batch = x.shape[0]
        cond = _batched(cond_tokens, batch, "cond_tokens")
        if uncond_tokens is not None:  # both halves in one pass, as the reference batches them
            both = torch.cat([cond, _batched(uncond_tokens, batch, "uncond_tokens").to(cond.dtype)])
            out = model.denoise(torch.cat([x, x]), _twice(t), text_tokens=both,
                                **{k: _twice(v) for k, v in conditioning.items()})
            cond_out, uncond_out = out.chunk(2, dim=0)
        else:
            cond_out = model.denoise(x, t, **conditioning, text_tokens=cond)
            uncond_out = model.denoise(x, t, **conditioning)
        return _combine(model, x, t, cond_out, uncond_out, scale)

    return guided


class Prompted:
    """The model as an edit sees it once a prompt is given: `denoise` answers under classifier-free
    guidance (x̂0 is read off the CFG output, so the guidance gradient goes through both halves);
    everything else is the model's own. The edits need no knowledge of prompts."""

    def __init__(self, model, cond_tokens: Tensor, uncond_tokens: Tensor | None, scale: float):
        self._model, self._cond, self._uncond, self._scale = model, cond_tokens, uncond_tokens, scale

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def denoise(self, x: Tensor, t: Tensor | float, **conditioning: Any) -> Tensor:
        return cfg_denoiser(self._model, self._cond, self._uncond, self._scale, **conditioning)(x, t)


def prompted(model, resolved, prompt: str | None, negative_prompt: str | None, cfg: float | None,
             cache: dict | None = None) -> tuple[object, dict]:
    """With a `prompt`, the model whose `denoise` runs classifier-free guidance on the prompt's
    tokens (encoded once per `cache`) at `cfg` (the model's reference default when None), and what
    the sidecar records of it; without one, the model as it is."""
    if prompt is None:
        return model, {}
    key = (prompt, negative_prompt)
    tokens = cache.get(key) if cache is not None else None
    if tokens is None:
        # MUSICGUIDE_TEXT_ENCODER: a local T5 folder instead of the pinned Hub download (offline use)
        tokens = encode_prompts(model, prompt, negative_prompt, model_folder=resolved.folder,
                                encoder_folder=os.environ.get("MUSICGUIDE_TEXT_ENCODER"))
        if cache is not None:
            cache[key] = tokens
    scale = getattr(model, "default_cfg_scale", DEFAULT_CFG) if cfg is None else cfg
    conditioner = text_conditioner(model.config)
    entry = None if getattr(conditioner, "elsewhere", None) else text_encoder_entry(conditioner.encoder_name)
    record = {"text": {"prompt": prompt, "negative_prompt": negative_prompt, "cfg_scale": scale,
                       "cfg_rule": "adaptive projection" if getattr(model, "cfg_projection", False) else "plain",
                       "text_encoder": {"repo": getattr(entry, "repo", None), "revision": getattr(entry, "revision", None)}}}
    return Prompted(model, tokens[0], tokens[1], scale), record
