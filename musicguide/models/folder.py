"""Model folders: `model_config.json` + `model.safetensors`, the layout of Stable Audio Open's Hub repos.

`split_weights` cuts a folder's weights into as few parts as a file-size limit allows (to commit
or ship them), and `merge_parts` makes a folder from such parts again.

Loading is strict, because a checkpoint that half-matches its config gives noise rather than an
error: every key the model has must be in the file with the right shape, and the file may hold no
other keys except those the reference keeps outside the network (a text encoder's projection).
Weights are read from the safetensors format only (never pickle: `tensor_file` maps the file and
checks its header) into a model built without initializing its weights (`model_skeleton`: memory
allocated and never touched, then freed as each of the file's tensors is copied, cast and assigned
to where state_dict names it), so a 1B-parameter model is held in memory once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from musicguide.atomic import write_atomically
from musicguide.cache import file_stamp, remembered
from musicguide.errors import UserError, one_line
from musicguide.models.config import ModelConfig, config_errors_name, is_sa3_config, read_config_json
from musicguide.models.latent_diffusion import LatentDiffusion, build_model
from musicguide.models.latent_model import LEAK_THRESHOLD, MAX_LEAK_FRAMES, LatentModel
from musicguide.models.layers import uninitialized
from musicguide.models.presets import tiny_random_config
from musicguide.models.tensor_file import TensorFile, TensorFileError
from musicguide.model_files import CONFIG_FILE, VAE_WEIGHTS_FILE, WEIGHTS_FILE, ResolvedModel  # re-exported

# State-dict prefixes of the two parts that are trained (and shipped) separately.
VAE_PREFIXES = ("pretransform.",)
DIT_PREFIXES = ("model.", "conditioner.")

# torch.nn.utils.parametrizations.weight_norm (the newer API) names the two weight-norm tensors
# differently from the published checkpoints; read either.
_PARAMETRIZED_NAMES = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def read_model_config(path: str | os.PathLike):
    """The config in `path`: a ModelConfig, or for a Stable Audio 3 model (its autoencoder is
    SAME) a models.sa3.SA3Config."""
    data = read_config_json(path)
    with config_errors_name(path):
        if not is_sa3_config(data):
            return ModelConfig.from_dict(data)
        from musicguide.models.sa3 import sa3_config_from_dict

        try:
            return sa3_config_from_dict(data)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"a Stable Audio 3 config musicguide cannot build: {one_line(err)}") from None


def _our_key(key: str) -> str:
    for theirs, ours in _PARAMETRIZED_NAMES.items():
        if key.endswith(theirs):
            return key[: -len(theirs)] + ours
    return key


def _ignored_prefixes(config) -> tuple[str, ...]:
    """Keys the reference stores for a text conditioner (its output projection, a learned padding
    embedding: `conditioner.conditioners.prompt.*`): not part of the model, musicguide/text.py reads
    them from the file when a prompt is encoded."""
    ids = config.text_ids if hasattr(config, "text_ids") else [c.id for c in config.conditioning.texts]
    return tuple(f"conditioner.conditioners.{i}." for i in ids)


def model_skeleton(config):
    """The model a config describes (Stable Audio Open's LatentDiffusion, or a Stable Audio 3
    model), its tensors allocated but never initialised: what load_model_folder fills."""
    with uninitialized():
        if isinstance(config, ModelConfig):
            return LatentDiffusion(config)
        from musicguide.models.sa3 import SA3Model

        return SA3Model(config)


def _describe(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_model_folder(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> LatentDiffusion:
    """The model in `path`, on `device` in `dtype` (floating tensors only), in eval mode, frozen."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"model folder {folder} not found")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} is missing",
                            hint=f"a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = read_model_config(folder / CONFIG_FILE)
    model = model_skeleton(config)
    slots = _state_slots(model)
    try:
        weights = TensorFile(folder / WEIGHTS_FILE)
    except TensorFileError as err:
        raise UserError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file: {err}") from None
    except OSError as err:
        raise UserError(f"cannot read {folder / WEIGHTS_FILE}: {err.strerror or err}") from None
    ignored = _ignored_prefixes(config)
    file_keys = {_our_key(k): k for k in weights.keys() if not k.startswith(ignored)}
    _check_keys({key: tuple(slot.shape) for key, slot in slots.items()},
                {ours: weights.entries[theirs].shape for ours, theirs in file_keys.items()})
    device = torch.device(device)
    views = weights.views(file_keys.values())
    for ours, theirs in file_keys.items():
        tensor = views.pop(theirs)  # dropped as soon as it is copied
        if device.type == "cpu":
            # A copy, never the view of the file: views sit at unaligned offsets, which are slower
            # and (through other SIMD paths) do not even give bit-identical results.
            tensor = _cast(tensor, dtype, copy=True)
        else:  # the file's bytes to the card, then cast there (half the bytes moved for fp16 files)
            tensor = _cast(tensor.to(device), dtype)
        slots[ours].assign(tensor)
    try:
        model.leak_memory = _leak_memory(file_stamp(folder / WEIGHTS_FILE))
    except OSError:  # gone since it was read: nothing is remembered about it
        pass
    return model.eval()  # frozen already: every parameter came from the file, made with requires_grad=False


class _Slot:
    """Where one state_dict key lives: a module's parameter or persistent buffer."""
    __slots__ = ("module", "name", "is_parameter", "shape")

    def __init__(self, module: nn.Module, name: str, is_parameter: bool, shape: torch.Size):
        self.module, self.name, self.is_parameter, self.shape = module, name, is_parameter, shape

    def assign(self, tensor: torch.Tensor) -> None:
        # What load_state_dict(assign=True) does for each key, without its per-module walk and
        # hooks (none of musicguide's modules has any): a third of the demo model's load.
        if self.is_parameter:
            self.module._parameters[self.name] = nn.Parameter(tensor, requires_grad=False)
        else:
            self.module._buffers[self.name] = tensor


def _state_slots(model: nn.Module) -> dict[str, _Slot]:
    """Each key of `model.state_dict()`, in its order, with where it lives (a module shared under two
    names is listed under both, as state_dict lists it)."""
    slots = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, parameter in module._parameters.items():
            if parameter is not None:
                slots[dot + name] = _Slot(module, name, True, parameter.shape)
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                slots[dot + name] = _Slot(module, name, False, buffer.shape)
    return slots


def _leak_memory(stamp: dict):
    """LatentModel.leak_memory for a model loaded from the weights file with this stamp."""
    def recall(model: LatentModel, measure) -> int:
        key = {**stamp, "device": model.device.type, "dtype": str(model.dtype), "threshold": LEAK_THRESHOLD,
               "most": MAX_LEAK_FRAMES}
        return remembered("encoder-leak", key, measure)

    return recall


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    token: str | None = None,
) -> tuple[LatentModel, ResolvedModel]:
    """Resolve `--model` and build the model (eval mode, frozen; float32 unless `dtype`); the single
    entry point the API uses."""
    # The registry (and huggingface_hub) only when a name is resolved: loading a folder, as training
    # and the GPU machine do, needs neither.
    from musicguide.registry import resolve_model

    dtype = torch.float32 if dtype is None else dtype
    resolved = resolve_model(name_or_path, token=token)
    if resolved.kind == "builtin":
        # Fork the RNG so that building the model neither depends on nor advances the caller's
        # seed: the same seed then gives the same weights, and the user's --seed stays reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(resolved.seed)
            model = build_model(tiny_random_config())
        return model.to(device=device, dtype=dtype), resolved
    assert resolved.folder is not None
    return load_model_folder(resolved.folder, device=device, dtype=dtype), resolved


def load_vae(vae_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The model config and the VAE weights (`pretransform.*`) of a `train_vae` folder, or of any
    complete model folder (so a new DiT can be trained on a published model's VAE)."""
    folder = Path(vae_dir)
    if (folder / VAE_WEIGHTS_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        config = ModelConfig.from_json(folder / CONFIG_FILE)
        return config, load_file(str(folder / VAE_WEIGHTS_FILE), device=str(device))
    if (folder / WEIGHTS_FILE).is_file():
        model = load_model_folder(folder, device=device)
        return model.config, {k: v for k, v in model.state_dict().items() if k.startswith(VAE_PREFIXES)}
    raise UserError(f"{folder} holds no VAE", hint="pass the --out folder of `musicguide train vae`, or a model folder")


def _check_keys(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [f"{k} {list(found[k])} (config wants {list(expected[k])})"
                   for k in expected if k in found and found[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected {_describe(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shape {_describe(wrong_shape)}")
    if problems:
        raise UserError(f"{WEIGHTS_FILE} does not match {CONFIG_FILE}: " + "; ".join(problems),
                        hint="the weights and the config come from different models")


def _cast(tensor: torch.Tensor, dtype: torch.dtype, copy: bool = False) -> torch.Tensor:
    return tensor.to(dtype if tensor.is_floating_point() else tensor.dtype, copy=copy)


def save_model_folder(model: LatentDiffusion, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> None:
    """Write `model` as a folder `load_model_folder` (and stable-audio-tools) can read.

    Each file is written to a temporary name and renamed, so an interrupted save never leaves a
    folder whose config and weights disagree."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (_cast(v, dtype) if dtype is not None else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_weights(state, folder / WEIGHTS_FILE)
    write_atomically(folder / CONFIG_FILE, model.config.to_json)


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """A safetensors file, written atomically and with the usual permissions (0644 under umask 022;
    safetensors itself creates files 0600)."""
    write_atomically(path, lambda p: save_file(state, str(p), metadata={"format": "pt"}))


# --- Shipping the weights in parts -----------------------------------------------------------------

def split_weights(model_dir: str | os.PathLike, out_dir: str | os.PathLike, max_bytes: int = 16 << 20,
                  dtype: torch.dtype = torch.float16) -> list[Path]:
    """Cut a model folder's weights, in `dtype`, into as few files as `max_bytes` allows: one
    `model.safetensors` when it fits (then `out_dir` with a model_config.json is a model folder),
    else `model-1-of-N.safetensors` ... `model-N-of-N.safetensors`. `merge_parts` puts them back."""
    state = load_file(str(Path(model_dir) / WEIGHTS_FILE))
    state = {k: _cast(v, dtype).contiguous() for k, v in state.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(state, max_bytes)
    written = [out / (WEIGHTS_FILE if len(chunks) == 1 else f"model-{i}-of-{len(chunks)}.safetensors")
               for i in range(1, len(chunks) + 1)]
    for chunk, path in zip(chunks, written):
        save_weights(chunk, path)
    return written


def _chunks(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of tensors whose files stay under max_bytes (a tensor larger than that
    gets a file of its own). The file header lists every tensor: about its name + 80 bytes each."""
    chunks: list[dict[str, torch.Tensor]] = [{}]
    size = 1024
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size() + len(key) + 80
        if chunks[-1] and size + nbytes > max_bytes:
            chunks.append({})
            size = 1024
        chunks[-1][key] = tensor
        size += nbytes
    return chunks


def merge_parts(parts: Sequence[str | os.PathLike], config: str | os.PathLike, out_dir: str | os.PathLike,
                dtype: torch.dtype = torch.float16) -> Path:
    """One model folder from weight parts (e.g. `split_weights`' vae + dit files) and a
    model_config.json, checked by loading it back strictly."""
    state: dict[str, torch.Tensor] = {}
    for part in parts:
        tensors = load_file(str(part))
        overlap = set(state) & set(tensors)
        if overlap:
            raise UserError(f"{part} repeats {sorted(overlap)[0]}, which an earlier part already holds")
        state.update(tensors)
    model = model_skeleton(read_model_config(config))
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise UserError(f"the parts do not make up the model in {config}: "
                        + (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"))
    model.load_state_dict(state, strict=True, assign=True)
    save_model_folder(model, out_dir, dtype=dtype)
    load_model_folder(out_dir)  # fails loudly if the folder would not load
    return Path(out_dir)


