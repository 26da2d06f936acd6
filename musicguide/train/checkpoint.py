"""`checkpoint.pt`: what a run needs to continue, written by rank 0 only, atomically.

It holds the unwrapped model's trained weights (never DDP's wrapper), the optimizer state, the EMA,
the step and the schedule's progress, and the log. None of it depends on the number of processes:
every process holds the same weights and optimizer state, and the data position is the step
(shard.py), so a run saved by N processes resumes with any other number whose multiple the global
batch is. Every process reads the checkpoint when resuming, so under several nodes `--out` must be
on storage they all see.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from musicguide.atomic import write_atomically
from musicguide.errors import UserError

if TYPE_CHECKING:
    from musicguide.train.run import TrainingRun

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(run: TrainingRun) -> None:
    if not run.world.is_main:
        return
    state = {
        "stage": run.stage,
        "step": run.step,
        "progress": run.progress,
        "batch_size": run.config.batch_size,  # global; with the seed and the step, the data position
        "world_size": run.world.size,  # for the record only: resuming may use another
        "model_config": json.dumps(run.model.config.to_dict()),
        "trained": run.trained_state(),
        "optimizer": run.optimizer.state_dict(),
        "ema": run.ema.shadow if run.ema else {},
        "log": json.dumps(run.log),
    }
    write_atomically(run.out_dir / CHECKPOINT_FILE, lambda p: torch.save(state, p))


def load_checkpoint(out_dir: Path, stage: str) -> dict:
    path = out_dir / CHECKPOINT_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("stage") != stage:
        raise UserError(f"{path} is a {state.get('stage')} checkpoint, not a {stage} one")
    return state


def restore(run: TrainingRun, state: dict) -> None:
    """Continue `run` from a checkpoint (on every process; the EMA only where it is kept)."""
    missing, unexpected = run.model.load_state_dict(state["trained"], strict=False)
    missing = [k for k in missing if k.startswith(run.prefixes)]
    if missing or unexpected:
        raise UserError(f"{run.out_dir / CHECKPOINT_FILE} does not match the model "
                        f"({(missing + unexpected)[0]} differs)")
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema and state["ema"]:
        run.ema.shadow = {name: s.to(run.device) for name, s in state["ema"].items()}
    run.step, run.progress = state["step"], state["progress"]
    earlier = json.loads(state["log"])  # keep its curves; this call's settings replace the old ones
    run.log.update(history=earlier["history"], validation=earlier["validation"],
                   resumed_at=earlier.get("resumed_at", []) + [run.step])


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that cannot become a folder, before any work: a file, a path under a file,
    or a place we may not write."""
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == out_dir else f"is under {existing}, which is a file"
        raise UserError(f"--out {out_dir} {where}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out_dir}: no permission to write in {existing}")


def prepare(out_dir: Path, stage: str, resume: bool, init: str | os.PathLike | None) -> dict | None:
    """Check --out, and return the checkpoint to resume from if asked. Writes nothing: the folder
    is made together with its first file (see train_loop), so a run refused later leaves no trace."""
    check_out_dir(out_dir)
    if resume and init is not None:
        raise UserError("--resume continues the run in --out; init starts a new one from a model's weights: "
                        "pass one of them")
    has_checkpoint = (out_dir / CHECKPOINT_FILE).is_file()
    if resume and not has_checkpoint:
        raise UserError(f"nothing to resume: {out_dir / CHECKPOINT_FILE} does not exist")
    if has_checkpoint and not resume:
        raise UserError(f"{out_dir} already holds a training run",
                        hint="pass --resume to continue it, or choose another --out")
    return load_checkpoint(out_dir, stage) if resume else None
