"""The report: `EvalReport`, the verdicts (where guided sampling does not beat a baseline), the
Markdown (table, notes, paired per-clip differences) and `write_report`, which publishes the JSON
and the Markdown together."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import __version__
from ..atomic import Outputs
from ..edit import SamplerSettings
from ..errors import UserError
from .baselines import BASELINES
from .clips import TASKS
from .metrics import METRIC_NAMES, METRICS, Scores


@dataclass
class EvalReport:
    rows: dict[str, dict[str, Scores]]  # row -> task -> scores; a task a row does not do is absent
    variants: dict[str, dict]  # sampling variant -> SamplerSettings as a dict
    primary: str | None
    protocol: dict
    model: dict
    seed: int
    steps: int
    clips: list[dict]
    skipped: list[dict]
    cases: dict[str, list[str]]  # task -> case labels, in per-case order
    fd_floor: float | None  # FD between two halves of the originals: FD's own noise at this n
    verdicts: dict[str, str]
    embedding_model: str = "musicnn MSD_musicnn, 200-d penultimate layer, mean over 3 s patches"
    elapsed_s: float = 0.0
    musicguide: str = __version__
    tasks: list[str] = field(default_factory=lambda: list(TASKS))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["rows"] = {row: {task: s.to_dict() for task, s in tasks.items()} for row, tasks in self.rows.items()}
        return data


# ---- verdicts: where guided sampling does not beat a baseline ----------------------------------


def _paired_noise(a: list[float], b: list[float]) -> float:
    """Two standard errors of the mean per-case difference (0 with fewer than 2 cases)."""
    differences = np.asarray(a) - np.asarray(b)
    return 0.0 if len(differences) < 2 else float(2 * differences.std(ddof=1) / math.sqrt(len(differences)))


def _value(value: float, metric: str) -> str:
    return f"{100 * value:.0f}%" if metric == "flagged" else f"{value:.3g}"


def _comparisons(guided: Scores, baseline: Scores) -> tuple[list[str], list[str]]:
    """Metrics on which `guided` does not beat `baseline`, and those it beats only within noise."""
    losses, within_noise = [], []
    for metric in METRICS:
        g, b = getattr(guided, metric), getattr(baseline, metric)
        if g is None or b is None:
            continue
        text = f"{METRIC_NAMES[metric]} ({_value(g, metric)} vs {_value(b, metric)})"
        if g >= b:
            losses.append(text)
        elif metric in guided.per_case and b - g < _paired_noise(guided.per_case[metric], baseline.per_case[metric]):
            within_noise.append(text)
    return losses, within_noise


def verdict(task: str, rows: dict[str, dict[str, Scores]], primary: str, baselines: Sequence[str]) -> str:
    """One sentence: the baselines and metrics where `primary` is not better (ties count against it),
    then those where it is better by less than two standard errors of the paired difference."""
    guided = rows[primary][task]
    losses, noisy = [], []
    for name in baselines:
        if task in rows.get(name, {}):
            lost, close = _comparisons(guided, rows[name][task])
            losses += [f"{name} on {', '.join(lost)}"] if lost else []
            noisy += [f"{name} on {', '.join(close)}"] if close else []
    if losses:
        sentence = f"{task.capitalize()}: {primary} does not beat " + "; ".join(losses) + "."
    else:
        sentence = f"{task.capitalize()}: {primary} beats every baseline on every metric."
    if noisy:
        sentence += " It beats " + "; ".join(noisy) + " by less than two standard errors of the paired per-clip difference."
    return sentence + f" (n = {guided.n}, lower is better, ties count as not beating.)"


def verdicts(rows: dict[str, dict[str, Scores]], primary: str | None, variants: Mapping[str, SamplerSettings],
             tasks: Sequence[str] = TASKS) -> dict[str, str]:
    if primary is None:
        return {task: f"{task}: no guided variant was run." for task in tasks}
    baselines = list(BASELINES) + [name for name, s in variants.items() if s.guidance == 0]
    return {task: verdict(task, rows, primary, baselines) for task in tasks}


# ---- Markdown ----------------------------------------------------------------------------------

PAIRED_METRICS = ("mr", "level_error_db", "level_jump_db")
# a transition has no original to compare with: no MR, no level error
TABLE_METRICS = {task: METRICS if task != "transition" else METRICS[2:] for task in TASKS}


def paired_differences(report: EvalReport, task: str, row: str, baseline: str) -> str:
    """A Markdown table of `row` − `baseline` clip by clip (negative: `row` is better), with the
    mean, two standard errors of it, and how many clips `row` wins."""
    ours, theirs = report.rows[row][task], report.rows[baseline][task]
    metrics = [m for m in PAIRED_METRICS if m in ours.per_case and m in theirs.per_case]
    lines = [f"| {task} clip | " + " | ".join(f"Δ {METRIC_NAMES[m]}" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    diffs = {m: np.asarray(ours.per_case[m]) - np.asarray(theirs.per_case[m]) for m in metrics}
    for i, label in enumerate(report.cases[task]):
        lines.append(f"| {label} | " + " | ".join(f"{diffs[m][i]:+.2f}" for m in metrics) + " |")
    lines.append("| **mean ± 2 SE** | " + " | ".join(
        f"**{diffs[m].mean():+.2f} ± {_paired_noise(ours.per_case[m], theirs.per_case[m]):.2f}**" for m in metrics) + " |")
    lines.append(f"| {row} better on | " + " | ".join(f"{int((diffs[m] < 0).sum())} of {len(diffs[m])}" for m in metrics) + " |")
    return "\n".join(lines)


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.0f}%" if metric == "flagged" else f"{value:.3g}" if metric == "fd" else f"{value:.2f}"


def markdown_table(report: EvalReport) -> str:
    """Rows = methods, columns = task × metric (lower is better in every column)."""
    columns = [(task, metric) for task in report.tasks for metric in TABLE_METRICS[task]]
    header = "| method | " + " | ".join(f"{task} {METRIC_NAMES[m]}" for task, m in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, tasks in report.rows.items():
        cells = [_cell(getattr(tasks[t], m), m) if t in tasks else "–" for t, m in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _variant_line(name: str, settings: dict) -> str:
    loss = "waveform" if settings["loss_space"] == "audio" else settings["loss_space"]
    guidance = "no gradient" if not settings["guidance"] else f"ξ = {settings['guidance']:g}, {loss}-space loss"
    consistency = "replacement on" if settings["consistency"] else "replacement off"
    return f"- {name}: {settings['sampler'].upper()}, {guidance}, {consistency}"


def _setup(report: EvalReport) -> list[str]:
    """The title, what was run, and the sampling variants."""
    model, revision = report.model.get("name", "?"), report.model.get("revision")
    files = sorted({c["file"] for c in report.clips})
    protocol = report.protocol
    return [
        f"# Evaluation: {model}" + (f" @ {revision}" if revision else ""),
        "",
        f"{len(report.clips)} clips of {protocol['clip_seconds']:g} s from {len(files)} files ({', '.join(files)}); "
        f"{len(report.cases['transition'])} transition pairs (tasks run: {', '.join(report.tasks)}). Infill and regeneration (strength {protocol['strength']:g}) "
        f"redo the middle {protocol['gap_seconds']:g} s; continuation keeps {protocol['continuation_context_seconds']:g} s; "
        f"transitions regenerate a {protocol['transition_overlap_seconds']:g} s constant-power crossfade. "
        f"{report.steps} sampling steps; clip k samples with seed {report.seed} + k.",
        "",
        *[_variant_line(name, settings) for name, settings in report.variants.items()],
    ]


def _metric_notes(report: EvalReport) -> list[str]:
    """What each column measures."""
    floor = "–" if report.fd_floor is None else f"{report.fd_floor:.3g}"
    return [
        "Lower is better in every column.",
        "",
        "- Level error: |RMS level of the generated region − the original's there| in dB, per clip (a hole or a "
        "blow-up shows here).",
        "- MR: multi-resolution log-mel L1 distance to the original over the generated region (7 STFTs of 32 to "
        "2048 samples, 5 to 320 mel bands, summed). Regeneration starts from 15 % of the original, so its MR is "
        "not comparable with infill's.",
        "- Level jump, spectral: mean over seams of `seam_report`'s measures (46 ms either side); flagged: the "
        "share of seams above the 95th percentile of the same measure all over the edit's input. Baselines whose "
        "source would lie outside the clip meet the original with a hard cut instead of a 30 ms fade.",
        "- FD: Fréchet distance between musicnn (MSD, 200-d penultimate layer) embeddings of the results and of "
        "the original clips: an FAD-like measure, not VGGish FAD. Transitions are embedded over a clip-length "
        f"stretch centred on the overlap. With {len(report.clips)} clips in 200 dimensions the covariances are "
        "rank-deficient and FD is biased upward; two halves of the originals are already FD "
        f"{floor} apart, a rough scale of its sampling noise.",
    ]


def _paired_sections(report: EvalReport) -> list[str]:
    """The primary variant against each unguided variant, clip by clip, on every task but transition."""
    parts = []
    references = [n for n, v in report.variants.items() if not v["guidance"] and n != report.primary]
    for task in [t for t in report.tasks if t != "transition"]:
        for baseline in references:
            if report.primary and task in report.rows.get(baseline, {}):
                parts += [f"### Paired per-clip differences, {task}: {report.primary} − {baseline}", "",
                          paired_differences(report, task, report.primary, baseline), ""]
    return parts


def render_markdown(report: EvalReport) -> str:
    return "\n".join([
        *_setup(report), "",
        markdown_table(report), "",
        *_metric_notes(report), "",
        "## Where guided sampling does not beat a baseline", "",
        *[f"- {report.verdicts[task]}" for task in report.tasks], "",
        *_paired_sections(report),
    ])


# ---- writing -----------------------------------------------------------------------------------


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_report(report: EvalReport, out_md: Path, out_json: Path, *, overwrite: bool = True) -> None:
    """The JSON first (it holds every number), then the Markdown, published together. If the JSON
    cannot be written (a full disk), the numbers go to a file in the temporary folder, or else to
    stdout, and the error says where: hours of evaluation are never lost to a write."""
    text = json.dumps(_finite_or_none(report.to_dict()), indent=2, allow_nan=False) + "\n"
    with Outputs([out_json, out_md], overwrite=overwrite) as outputs:
        outputs.reserve()
        try:
            outputs.write(out_json, lambda path: path.write_text(text))
            outputs.write(out_md, lambda path: path.write_text(render_markdown(report)))
            outputs.publish()
        except UserError as error:
            raise UserError(f"{error}; the evaluation's numbers are in {_rescue(text)}") from error


def _rescue(text: str) -> str:
    import tempfile

    try:
        handle, name = tempfile.mkstemp(prefix="musicguide-evaluate-", suffix=".json")
        with os.fdopen(handle, "w") as f:
            f.write(text)
        return name
    except OSError:
        print(text)
        return "the JSON printed on stdout"
