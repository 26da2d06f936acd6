"""The protocol runner: the model's sampling variants, every row's method, and `evaluate`, which
cuts the clips, runs every row on every case and scores them into an `EvalReport`."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from ..edit import SamplerSettings
from ..errors import UserError
from ..splice import fade_samples
from .baselines import BASELINES, round_trip_method, unedited, with_fade
from .clips import TASKS, Case, Method, Output, Protocol, audio_files, build_cases, check_tasks, cut_clips
from .metrics import Embedder, Scores, aggregate, score_case, split_half_fd
from .report import EvalReport, verdicts

if TYPE_CHECKING:  # the caller makes the Editor: `musicguide evaluate`, or api.Editor.from_model(model)
    from ..api import Editor, Result

# Sampling variants: name -> overrides of SamplerSettings. All share the step count and, per clip,
# the seed (seed + clip index), so their differences come from the settings and not from the noise.
MODEL_VARIANTS: dict[str, dict] = {
    "replacement only": {"sampler": "ddim", "loss_space": "latent", "guidance": 0.0, "consistency": True},
    "guided DDIM, latent loss": {"sampler": "ddim", "loss_space": "latent", "consistency": True},
    "guided DDIM, waveform loss": {"sampler": "ddim", "loss_space": "audio", "consistency": True},
    "guided DDPM, latent loss": {"sampler": "ddpm", "loss_space": "latent", "consistency": True},
}
# For a model with an inpainting condition of its own (Stable Audio 3), which every variant above
# gets too: the condition alone, as its reference sampler inpaints (ping-pong, no guidance, nothing
# pasted), so that the report shows what musicguide's guidance adds on top of it.
INPAINTING_VARIANTS: dict[str, dict] = {
    "inpainting condition alone": {"sampler": "pingpong", "loss_space": "latent", "guidance": 0.0, "consistency": False},
    "inpainting condition + guidance": {"sampler": "pingpong", "loss_space": "latent", "consistency": True},
}


def variants_for(model) -> dict[str, dict]:
    """The variants a model is evaluated with: MODEL_VARIANTS, and INPAINTING_VARIANTS where it has the condition."""
    return {**MODEL_VARIANTS, **(INPAINTING_VARIANTS if getattr(model, "has_inpainting", False) else {})}


# The paper's Table 1 configuration: the variant the verdicts compare with the baselines.
PRIMARY_VARIANT = "guided DDIM, latent loss"
ORIGINAL = "original (no edit)"
ROUND_TRIP = "VAE round trip"

Progress = Callable[[int, int, str], None]


def model_variants(steps: int, seed: int, table: Mapping[str, dict] = MODEL_VARIANTS) -> dict[str, SamplerSettings]:
    return {name: SamplerSettings(**{"steps": steps, "seed": seed, **overrides}) for name, overrides in table.items()}


def _run_model(editor: Editor, case: Case, settings: SamplerSettings, protocol: Protocol) -> Result:
    """One case through the Python API, as a user's edit of that clip would run."""
    sr = editor.sample_rate
    options = {"sample_rate": sr, "context": protocol.context_seconds, "steps": settings.steps, "seed": settings.seed,
               "sampler": settings.sampler, "guidance": settings.guidance, "eta": settings.eta,
               "loss_space": settings.loss_space, "consistency": settings.consistency}
    if case.task == "infill":
        return editor.infill(case.song, case.start / sr, case.end / sr, **options)
    if case.task == "regeneration":
        return editor.regenerate(case.song, case.start / sr, case.end / sr, strength=protocol.strength, **options)
    if case.task == "continuation":
        return editor.continue_(case.song, (case.end - case.start) / sr, **options)
    first, second = case.pair
    return editor.transition(first, second, length=(case.end - case.start) / sr, strength=protocol.strength, **options)


def model_method(editor: Editor, settings: SamplerSettings, protocol: Protocol) -> Method:
    """A report row's method: each case edited by `editor`."""
    if settings.distance != "l1":
        raise ValueError("the evaluation's variants measure d with l1, as the edits do")

    def run(case: Case) -> Output:
        result = _run_model(editor, case, replace(settings, seed=settings.seed + case.index), protocol)
        seams = result.seams  # measured against case.song, as score_case would
        return Output(result.audio[:, : case.length], [s.position for s in seams], seams)

    return run


def method_table(editor: Editor, variants: Mapping[str, SamplerSettings], protocol: Protocol, fade: int,
                 tasks: Sequence[str] = TASKS) -> dict[str, dict[str, Method]]:
    """Every row of the report that does one of `tasks`: name -> {task: method}, in the table's order."""
    rows = {name: {task: with_fade(fill, fade) for task, fill in fills.items()} for name, fills in BASELINES.items()}
    for name, settings in variants.items():
        rows[name] = dict.fromkeys(TASKS, model_method(editor, settings, protocol))
    rows[ROUND_TRIP] = dict.fromkeys(TASKS[:3], round_trip_method(editor.model))
    rows[ORIGINAL] = {task: with_fade(unedited, fade) for task in TASKS[:3]}
    rows = {name: {t: m for t, m in methods.items() if t in tasks} for name, methods in rows.items()}
    return {name: methods for name, methods in rows.items() if methods}


def score_method(method: Method, cases: Sequence[Case], sample_rate: int, embed: Embedder, originals: np.ndarray,
                 tick: Callable[[], None]) -> Scores:
    """Run one row's method on every case of a task and score the outputs."""
    scored, excerpts = [], []
    for case in cases:
        output = method(case)
        scored.append(score_case(case, output, sample_rate))
        excerpts.append(output.audio[:, case.excerpt[0] : case.excerpt[1]])
        tick()
    return aggregate(scored, embed(excerpts), originals)


def _primary(variants: Mapping[str, SamplerSettings]) -> str | None:
    if PRIMARY_VARIANT in variants:
        return PRIMARY_VARIANT
    return next((name for name, s in variants.items() if s.guidance > 0), None)


def evaluate(editor: Editor, clips_dir: Path, *, variants: Mapping[str, SamplerSettings] | None = None, steps: int = 50,
             n_clips: int = 24, seed: int = 0, protocol: Protocol = Protocol(), tracks: Sequence[str] | None = None,
             model_info: dict | None = None, progress: Progress | None = None,
             tasks: Sequence[str] = TASKS) -> EvalReport:
    """Run the protocol with `editor` (an `api.Editor`, its model on its own device) on clips cut from the files in `clips_dir`
    (only `tracks`, when given). `variants` defaults to MODEL_VARIANTS with `steps` and `seed`;
    clip k samples with seed + k. progress(done, total, what) is called after every output. `tasks`
    runs a subset of the protocol's tasks (a sweep of one setting needs only some)."""
    tasks = check_tasks(tasks)
    started = time.perf_counter()
    model = editor.model
    variants = dict(model_variants(steps, seed, variants_for(model)) if variants is None else variants)
    sr = model.sample_rate
    clips, skipped = cut_clips(audio_files(clips_dir, tracks), protocol, sr, model.audio_channels, n_clips)
    if len(clips) < 2 or len({c.file for c in clips}) < 2:
        raise UserError(f"need at least 2 usable {protocol.clip_seconds:g} s clips from 2 different files, found "
                        f"{len(clips)}", hint="add audio files, or allow more clips with --clips")
    cases = build_cases(clips, protocol, sr)
    embed = Embedder(model.device, sr)
    originals = embed([c.audio for c in clips])
    table = method_table(editor, variants, protocol, fade_samples(sr), tasks)
    total = sum(len(cases[task]) for methods in table.values() for task in methods)
    done = [0]

    def tick(what: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total, what)

    rows = {name: {task: score_method(method, cases[task], sr, embed, originals, lambda: tick(f"{name}: {task}"))
                   for task, method in methods.items()}
            for name, methods in table.items()}
    primary = _primary(variants)
    return EvalReport(
        rows=rows, variants={n: s.to_dict() for n, s in variants.items()}, primary=primary,
        protocol=protocol.to_dict(), model=model_info or {}, seed=seed, steps=steps,
        clips=[c.to_dict(sr) for c in clips], skipped=skipped,
        cases={task: [c.label for c in task_cases] for task, task_cases in cases.items()},
        fd_floor=split_half_fd(originals), verdicts=verdicts(rows, primary, variants, tasks),
        elapsed_s=round(time.perf_counter() - started, 1), tasks=list(tasks),
    )
