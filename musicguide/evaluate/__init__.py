"""`musicguide evaluate`: the paper's evaluation protocol (docs/evaluation.md) on held-out clips.

Deterministic clips are cut from every audio file in a folder. Each clip goes through four tasks —
infill, regeneration, continuation and transition (pairs of clips from different files) — done by
every *method*: plain baselines that need no model, the model sampled under a few settings (the
`MODEL_VARIANTS` table), the VAE round trip alone, and the untouched original. Each result is
judged three ways:

* MR: the multi-resolution log-mel L1 distance to the original over the generated region
  (VampNet/DAC style; none for transitions, which have no original), and the level error there;
* seams: `splice.seam_report`'s level jump and spectral distance at each boundary of the region,
  and the fraction of boundaries that change more than the original music does almost anywhere;
* FD: the Fréchet distance between musicnn (MSD) embeddings of the results and of the original
  clips, an FAD-like measure on musicnn rather than VGGish embeddings.

The modules, in the order the work flows:

* `clips`: the tasks, the `Protocol`, cutting clips from a folder, and the cases built from them;
* `baselines`: the rows that need no sampling, and the VAE round trip;
* `metrics`: MR, FD and the per-case and per-row scores;
* `protocol`: the sampling variants, every row's method, and `evaluate`, which returns an `EvalReport`;
* `report`: `EvalReport`, the verdicts, the Markdown, and `write_report` (JSON and Markdown);

The names other code uses are importable from `musicguide.evaluate` itself.
"""

from .baselines import (
    BASELINES, copy_fill, linear_crossfade_fill, loop_fill, plain_crossfade, round_trip, silence_fill, unedited,
)
from .clips import (
    TASKS, Case, Clip, Output, Protocol, audio_files, build_cases, clip_starts, cut_clips, read_track_list,
    transition_pairs,
)
from .metrics import METRIC_NAMES, METRICS, Scores, embedding_fd, mel_distance, mel_filterbank
from .protocol import MODEL_VARIANTS, ORIGINAL, PRIMARY_VARIANT, ROUND_TRIP, evaluate, model_method, model_variants
from .report import EvalReport, render_markdown, verdict, verdicts, write_report

__all__ = [
    "BASELINES", "METRICS", "METRIC_NAMES", "MODEL_VARIANTS", "ORIGINAL", "PRIMARY_VARIANT", "ROUND_TRIP", "TASKS",
    "Case", "Clip", "EvalReport", "Output", "Protocol", "Scores",
    "audio_files", "build_cases", "clip_starts", "copy_fill", "cut_clips", "embedding_fd", "evaluate",
    "linear_crossfade_fill", "loop_fill", "mel_distance", "mel_filterbank", "model_method", "model_variants",
    "plain_crossfade", "read_track_list", "render_markdown", "round_trip", "silence_fill",
    "transition_pairs", "unedited", "verdict", "verdicts", "write_report",
]
