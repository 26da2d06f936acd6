"""The loop both stages share: AdamW under warmup + cosine, clipping, EMA, validation, logs, checkpoints.

Under torchrun every process runs this loop in lockstep. Each step ends with one small all-reduce
of (loss, loss parts, gradient norm, elapsed seconds), so that every process logs the same mean
loss, skips the same non-finite steps and follows the same clock (the learning rate under a time
budget, and when the budget ends). Only rank 0 validates, keeps the EMA, writes the log, the
checkpoint and the exported weights, and reports progress.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from musicguide import distributed
from musicguide.atomic import write_atomically
from musicguide.errors import Interrupted
from musicguide.train.checkpoint import save_checkpoint
from musicguide.train.run import PHASES, TrainingRun
from musicguide.train.settings import (
    LOG_FILE,
    MAX_BAD_STEPS,
    TrainConfig,
    TrainProgress,
    TrainResult,
)

# A stage's step: `batch(step)` gathers this process's part of the step's batch and returns the
# forward pass on it (loss, parts), so that the loop can time the data apart from the model.
StepBatch = Callable[[int], Callable[[], "tuple[Tensor, dict[str, Tensor]]"]]
# Steps of each call (counted from its first, which pays for lazy set-up) whose time is split into
# data, forward, backward and optimizer, with the device synchronised between them.
PROFILED_STEPS = range(1, 6)
Validate = Callable[[], "dict[str, float]"]


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup, then a cosine from lr down to lr / 10 as `progress` goes from 0 to 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


class _Clock:
    """Progress through a run: the larger of the step fraction and the time-budget fraction. A
    resumed run with a budget stretches what was left of the schedule over the new budget. Under
    torchrun the processes agree on the time: the mean of theirs at the last step (`agreed`)."""

    def __init__(self, config: TrainConfig, start_progress: float):
        self.steps, self.start_progress = config.steps, start_progress
        self.budget_s = config.max_minutes * 60 if config.max_minutes else None
        self.started = time.monotonic()
        self.agreed: float | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def now(self) -> float:
        return self.elapsed if self.agreed is None else self.agreed

    def progress(self, step: int) -> float:
        by_steps = step / self.steps
        if self.budget_s is None:
            return by_steps
        by_time = self.start_progress + (1 - self.start_progress) * self.now / self.budget_s
        return min(1.0, max(by_steps, by_time))

    def out_of_time(self) -> bool:
        return self.budget_s is not None and self.now >= self.budget_s


class _Window:
    """The losses since the last log line."""

    def __init__(self):
        self.losses: list[float] = []
        self.parts: dict[str, float] = {}

    def add(self, values: dict[str, float]) -> None:
        self.losses.append(values["loss"])
        for k, v in values.items():
            if k not in ("loss", "grad_norm"):
                self.parts[k] = self.parts.get(k, 0.0) + v


def relative_to_run(path: str | os.PathLike | None, out_dir: Path) -> str | None:
    """A path as the stage's log records it: relative to the run's own folder, where the log lies,
    so that a log moved to another machine or committed names no folder of this one."""
    if path is None:
        return None
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(path).name


def write_log(run: TrainingRun) -> None:
    if run.world.is_main:
        write_atomically(run.out_dir / LOG_FILE, lambda p: p.write_text(json.dumps(run.log, indent=1) + "\n"))


def _report(run: TrainingRun, clock: _Clock, loss: float | None, val_loss: float | None = None) -> None:
    if run.progress_callback and run.world.is_main:
        lr = run.optimizer.param_groups[0]["lr"]
        run.progress_callback(TrainProgress(run.stage, run.step, run.config.steps, loss, lr, clock.elapsed, val_loss))


def _validate(run: TrainingRun, validate: Validate, clock: _Clock) -> float | None:
    if not run.world.is_main:
        return None
    run.model.eval()
    with torch.no_grad(), run.autocast(), run.averaged():
        parts = validate()
    run.model.train()
    if not parts:
        return None
    run.log["validation"].append({"step": run.step, "elapsed_s": round(clock.elapsed, 2), **parts})
    _report(run, clock, None, parts["loss"])
    return parts["loss"]


def _agree(run: TrainingRun, clock: _Clock, loss: Tensor, parts: dict[str, Tensor], grad_norm: Tensor) -> dict[str, float]:
    """This step's loss, its parts and the gradient norm, as the mean over processes (one
    all-reduce, which also settles the clock); alone, just their values."""
    local = [loss.detach().float(), *(p.detach().float() for p in parts.values()), grad_norm.float()]
    values = torch.stack([*local, torch.tensor(clock.elapsed, device=loss.device)]).double()
    values = distributed.average(values, run.world).tolist()
    if run.world.size > 1:
        clock.agreed = values[-1]
    return dict(zip(["loss", *parts, "grad_norm"], values[:-1]))


def _step(run: TrainingRun, step_batch: StepBatch, clock: _Clock) -> dict[str, float] | None:
    """One optimiser step; the step's losses, or None when it was skipped as non-finite."""
    profiled = run.step - run.first_step in PROFILED_STEPS
    marks = [_mark(run.device, profiled)]
    run.progress = clock.progress(run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(run.config, run.step, run.progress)
    forward = step_batch(run.step)
    marks.append(_mark(run.device, profiled))
    with run.autocast():
        loss, parts = forward()
    marks.append(_mark(run.device, profiled))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    marks.append(_mark(run.device, profiled))
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, run.config.grad_clip)
    values = _agree(run, clock, loss, parts, grad_norm)
    if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
        run.bad_steps += 1  # a bf16 overflow now and then is skipped; a diverged run is stopped
        if run.bad_steps >= MAX_BAD_STEPS:
            raise FloatingPointError(f"{run.bad_steps} non-finite losses in a row at step {run.step}")
        return None
    run.bad_steps = 0
    run.optimizer.step()
    if run.ema:
        run.ema.update(run.step)
    marks.append(_mark(run.device, profiled))
    if profiled:
        for phase, start, end in zip(PHASES, marks, marks[1:]):
            run.phase_seconds[phase].append(end - start)
    run.step += 1
    return values


def _mark(device: torch.device, profiled: bool) -> float:
    """Now, after the device has finished its queued work on a profiled step (CUDA runs ahead of
    Python, so without it the time of one phase lands in the next); no sync on the other steps."""
    if profiled and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def step_profile(run: TrainingRun) -> dict | None:
    """The profiled steps' mean seconds per phase and the examples per second they make."""
    count = len(run.phase_seconds["data"])
    if count == 0:
        return None
    means = {f"{phase}_s": sum(times) / count for phase, times in run.phase_seconds.items()}
    step_s = sum(means.values())
    return {"steps": count, **{k: round(v, 6) for k, v in means.items()}, "step_s": round(step_s, 6),
            "examples_per_s": round(run.examples_per_step / max(step_s, 1e-9), 2)}


def train_loop(run: TrainingRun, step_batch: StepBatch, validate: Validate, export: Callable[[], None]) -> TrainResult:
    """Step until `steps` or the time budget; validate, log and checkpoint on the way. Whatever
    stops the run (the end, the budget, Ctrl-C, an error), what was trained is saved and exported."""
    config, clock = run.config, _Clock(run.config, run.progress)
    if run.world.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)  # only now: every check and all set-up are behind us
    torch.manual_seed(config.seed + run.step)  # anything left to the global RNG does not replay old draws
    run.model.train()
    first_step, stopped, window = run.step, "steps", _Window()
    run.first_step = first_step
    try:
        while run.step < config.steps:
            if clock.out_of_time():
                stopped = "time"
                break
            values = _step(run, step_batch, clock)
            if values is None:
                continue
            window.add(values)
            if run.step % config.log_every == 0:
                _log_window(run, clock, window, first_step)
                window = _Window()
            if run.step % config.val_every == 0:
                _validate(run, validate, clock)
                write_log(run)
            if run.step % config.checkpoint_every == 0:
                save_checkpoint(run)
    except BaseException as error:
        stopped = "interrupted" if isinstance(error, (KeyboardInterrupt, Interrupted)) else \
            f"error: {type(error).__name__}: {error}"
        try:
            _finish(run, clock, stopped, first_step, export, validate=None)
        except Exception as save_error:  # report the first failure, not the one it caused
            error.add_note(f"saving what was trained also failed: {save_error!r}")
        raise
    if window.losses:
        _log_window(run, clock, window, first_step)
    return _finish(run, clock, stopped, first_step, export, validate)


def _log_window(run: TrainingRun, clock: _Clock, window: _Window, first_step: int) -> None:
    loss = sum(window.losses) / len(window.losses)
    entry = {"step": run.step, "elapsed_s": round(clock.elapsed, 2), "loss": loss,
             "lr": run.optimizer.param_groups[0]["lr"],
             "examples_per_s": round((run.step - first_step) * run.examples_per_step / max(clock.elapsed, 1e-9), 2)}
    entry.update({k: v / len(window.losses) for k, v in window.parts.items()})
    run.log["history"].append(entry)
    _report(run, clock, loss)


def _finish(run: TrainingRun, clock: _Clock, stopped: str, first_step: int, export: Callable[[], None],
            validate: Validate | None) -> TrainResult:
    """Final validation (unless the run failed), checkpoint, log and exported weights (rank 0's)."""
    seconds = clock.elapsed
    val_loss = _validate(run, validate, clock) if validate and run.step > first_step else None
    if val_loss is None and run.log["validation"]:
        val_loss = run.log["validation"][-1]["loss"]
    train_loss = run.log["history"][-1]["loss"] if run.log["history"] else None
    result = TrainResult(run.stage, run.out_dir, run.step, stopped, train_loss, val_loss, seconds,
                         (run.step - first_step) * run.examples_per_step / max(seconds, 1e-9))
    run.log["result"] = {k: (relative_to_run(v, run.out_dir) if isinstance(v, Path) else v)
                         for k, v in asdict(result).items()}
    run.log["step_profile"] = step_profile(run)
    if run.world.is_main:
        save_checkpoint(run)
        export()
        write_log(run)
    return result
