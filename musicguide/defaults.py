"""The edits' defaults, in one place, importable without torch (the CLI builds its options from them);
the checks of the values a user gives are in `options`.

Step sizes ξ that depend on the model and the loss space live with the sampler (`edit.DEFAULT_GUIDANCE`).
"""

from __future__ import annotations

# The paper's regeneration strength: the free region starts as 85 % noise, 15 % original.
DEFAULT_STRENGTH = 0.85
# restyle's SDEdit start: the whole window noised to t = 0.6 keeps the input's timing
RESTYLE_STRENGTH = 0.6
# Restyle's terms: the style loss through decoder and tagger (its gradient is tiny), the latent L1
# on the context frames (the same term as an infill's; its ξ was chosen by restyle's own sweep in
# docs/guidance.md, and stayed when the edits' latent ξ moved to 0.005), and `keep`'s log-mel
# envelope distance (summed over mel bands and ~128 ms frames).
DEFAULT_STYLE_GUIDANCE = 100.0
DEFAULT_CONTEXT_GUIDANCE = 3e-2
DEFAULT_KEEP = 1.0
TRANSITION_SECONDS = 8.0
GENERATE_SECONDS = 10.0
DEFAULT_CFG = 6.0  # classifier-free guidance on a prompt: stable-audio-tools' default cfg_scale
# No song or edit is longer: a bound that keeps every sample count a small integer.
MAX_SECONDS = 100 * 3600.0
