"""What the VAE and the DiT stage set up alike: the device and the process group, the checkpoint to
resume, this process's shard of the corpus, the model, the run, and the loss wrapped for DDP.

Under torchrun (WORLD_SIZE > 1) each process joins the group (NCCL on GPUs, gloo on CPUs), takes
the GPU of its LOCAL_RANK, and trains through DistributedDataParallel; alone, nothing of that
happens and the loss module is called as it is.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from musicguide import distributed
from musicguide.distributed import World
from musicguide.errors import UserError
from musicguide.models.config import ModelConfig
from musicguide.models.latent_diffusion import LatentDiffusion, build_model
from musicguide.train.checkpoint import prepare, restore
from musicguide.train.data import Corpus, TrackBank, load_corpus
from musicguide.train.run import EMA, TrainingRun
from musicguide.train.settings import ProgressCallback, TrainConfig
from musicguide.train.shard import Shard


def place(device: str | torch.device | None) -> tuple[torch.device, World]:
    """The training device (under torchrun, the GPU of this process's LOCAL_RANK) and the process
    group, joined when launched by torchrun."""
    here = distributed.world()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if here.size > 1 and device.index is None:
            device = torch.device("cuda", here.local_rank)
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once
    return device, distributed.start(device.type)


class _Objective(nn.Module):
    """A stage's loss as a module, so that DistributedDataParallel sees the forward pass it syncs."""

    def __init__(self, model: LatentDiffusion, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args):
        return self.loss(self.model, *args)


def start_from(model: LatentDiffusion, state: dict[str, Tensor], prefixes: tuple[str, ...],
               source: str | os.PathLike) -> None:
    """Copy the `prefixes` part of `state` (e.g. a shipped model's fp16 weights) into `model`,
    which must have exactly those tensors in those shapes."""
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    theirs = {k: v for k, v in state.items() if k.startswith(prefixes)}
    differs = sorted(k for k in ours.keys() | theirs.keys()
                     if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
    if differs:
        raise UserError(f"the weights in {source} do not fit this run's model ({differs[0]} differs)",
                        hint="start from a model of the same preset and VAE")
    with torch.no_grad():
        for key, value in theirs.items():
            ours[key].copy_(value)


@dataclass
class Stage:
    name: str  # "vae" or "dit"
    prefixes: tuple[str, ...]  # the state_dict keys it trains
    out_dir: Path
    device: torch.device
    world: World
    checkpoint: dict | None  # to resume from

    @classmethod
    def open(cls, name: str, prefixes: tuple[str, ...], out_dir: str | os.PathLike,
             device: str | torch.device | None, resume: bool, init: str | os.PathLike | None) -> Stage:
        """Check --out and read the checkpoint (before any other work), then join the group."""
        out_dir = Path(out_dir)
        checkpoint = prepare(out_dir, name, resume, init)
        return cls(name, prefixes, out_dir, *place(device), checkpoint)

    def corpus(self, data: str | os.PathLike | Corpus, config: TrainConfig, holdout: Sequence[str] | None) -> Corpus:
        """The data folder's files, not decoded yet (see `shard`), or the Corpus given."""
        if isinstance(data, Corpus):
            return data
        return load_corpus(data, holdout=holdout, val_fraction=config.val_fraction, decode=False)

    def shard(self, corpus: Corpus, entries: Sequence[int], batch: int) -> Shard:
        """This process's shard of the training entries (each a file's index), with those files
        decoded; rank 0 also decodes the held-out files, which it validates on."""
        shard = Shard([corpus.durations[i] for i in entries], batch, self.world)
        needed = {entries[t] for t in shard.tracks}
        if self.world.is_main:
            needed |= set(corpus.indices(held_out=True))
        corpus.decode(needed)
        return shard

    def bank(self, tracks: list[Tensor], rate: float, min_length: int, dtype: torch.dtype = torch.float32,
             timing: Sequence[tuple[float, float]] | None = None) -> TrackBank | None:
        return TrackBank(tracks, rate, min_length, self.device, dtype, timing) if tracks else None

    def build(self, model_config: ModelConfig, seed: int) -> LatentDiffusion:
        torch.manual_seed(seed)  # the same random weights in every process (DDP also broadcasts rank 0's)
        return build_model(model_config).to(self.device)

    def run(self, model: LatentDiffusion, config: TrainConfig, progress: ProgressCallback | None,
            log: dict, ema_decay: float | None = None) -> TrainingRun:
        """The run, continued from the checkpoint if resuming. The EMA is kept by rank 0 only."""
        run = TrainingRun(self.name, model, self.prefixes, config, self.out_dir, self.device, self.world, progress,
                   log={"stage": self.name, **log})
        if ema_decay is not None and self.world.is_main:
            run.ema = EMA(run.named_params, ema_decay)
        if self.checkpoint:
            restore(run, self.checkpoint)
        return run

    def objective(self, model: LatentDiffusion, loss: Callable, config: TrainConfig) -> nn.Module:
        """`loss(model, *args)` as a module: through torch.compile when asked and on CUDA, and
        through DistributedDataParallel under torchrun (gradients averaged over processes)."""
        if config.compile and self.device.type == "cuda":  # elsewhere a C++ toolchain may be missing
            loss = torch.compile(loss)
        module = _Objective(model, loss)
        if self.world.size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def data_log(self, corpus: Corpus, config: TrainConfig, model_config: ModelConfig) -> dict:
        train_names, _ = corpus.split(held_out=False)
        return {"train_config": asdict(config), "model_config": model_config.to_dict(), "device": str(self.device),
                "world_size": self.world.size, "batch_per_process": config.batch_size // self.world.size,
                "corpus_seconds": round(corpus.seconds, 1), "train_files": train_names,
                "holdout_files": corpus.holdout}
