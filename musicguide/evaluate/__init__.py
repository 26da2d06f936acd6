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

from musicguide import lazy_exports

# Each public name and the module that defines it, imported on first use: importing one module of
# the package (Python imports the package first) then imports that module alone.
_HOME = {
    "audio_files": "musicguide.evaluate.clips",
    "BASELINES": "musicguide.evaluate.baselines",
    "build_cases": "musicguide.evaluate.clips",
    "Case": "musicguide.evaluate.clips",
    "Clip": "musicguide.evaluate.clips",
    "clip_starts": "musicguide.evaluate.clips",
    "copy_fill": "musicguide.evaluate.baselines",
    "cut_clips": "musicguide.evaluate.clips",
    "embedding_fd": "musicguide.evaluate.metrics",
    "EvalReport": "musicguide.evaluate.report",
    "evaluate": "musicguide.evaluate.protocol",
    "linear_crossfade_fill": "musicguide.evaluate.baselines",
    "loop_fill": "musicguide.evaluate.baselines",
    "mel_distance": "musicguide.evaluate.metrics",
    "mel_filterbank": "musicguide.evaluate.metrics",
    "METRIC_NAMES": "musicguide.evaluate.metrics",
    "METRICS": "musicguide.evaluate.metrics",
    "model_method": "musicguide.evaluate.protocol",
    "MODEL_VARIANTS": "musicguide.evaluate.protocol",
    "model_variants": "musicguide.evaluate.protocol",
    "ORIGINAL": "musicguide.evaluate.protocol",
    "Output": "musicguide.evaluate.clips",
    "plain_crossfade": "musicguide.evaluate.baselines",
    "PRIMARY_VARIANT": "musicguide.evaluate.protocol",
    "Protocol": "musicguide.evaluate.clips",
    "read_track_list": "musicguide.evaluate.clips",
    "render_markdown": "musicguide.evaluate.report",
    "round_trip": "musicguide.evaluate.baselines",
    "ROUND_TRIP": "musicguide.evaluate.protocol",
    "Scores": "musicguide.evaluate.metrics",
    "silence_fill": "musicguide.evaluate.baselines",
    "TASKS": "musicguide.evaluate.clips",
    "transition_pairs": "musicguide.evaluate.clips",
    "unedited": "musicguide.evaluate.baselines",
    "verdict": "musicguide.evaluate.report",
    "verdicts": "musicguide.evaluate.report",
    "write_report": "musicguide.evaluate.report",
}
__all__ = sorted(_HOME)
__getattr__ = lazy_exports(__name__, _HOME)
