"""The commands by name: the module that registers each, and what the root's `--help` says of it."""

# name → (the module that registers it, the first sentence of its help), in the order `--help` lists
# them. tests/test_cli.py holds each sentence to the command's own help.
COMMANDS = {
    "infill": ("musicguide.cli.edits", "Replace a stretch of the song with new music that fits what comes before and after."),
    "regenerate": ("musicguide.cli.edits", "Redo a section as a variation of itself: it starts from a mix of noise and the original."),
    "loop": ("musicguide.cli.edits", "Write a seamless loop of a region: its end is regenerated so that it flows back into its start."),
    "continue": ("musicguide.cli.edits", "Add music after the end of the song, in overlapping chunks when it is longer than the model's window."),
    "transition": ("musicguide.cli.edits", "Write a musical transition from one track into the next (their crossfade, regenerated)."),
    "generate": ("musicguide.cli.edits", "New music from the model alone (no input, no guidance)."),
    "restyle": ("musicguide.cli.edits", "Steer a song toward the style of reference clips (--like) or toward/away from tags (--toward/--away-from)."),
    "tags": ("musicguide.cli.tools", "What the musicnn tagger hears: the top tags with their probabilities (mean over 3 s patches)."),
    "batch": ("musicguide.cli.tools", "Run many edits with one model load: each job writes what its command alone would, from the same seed."),
    "beats": ("musicguide.cli.tools", "The song's beat grid as bar and beat times take it: tempo, meter, and every bar's beats (bars from 1)."),
    "evaluate": ("musicguide.cli.evaluation", "Measure infill, regeneration, continuation and transitions against baselines (the paper's protocol)."),
    "models": ("musicguide.cli.tools", "The models musicguide knows and what is cached."),
    "train": ("musicguide.cli.tools", "Train the model family on your own audio (VAE first, then the DiT)."),
}
MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))


def command_modules(argv: list[str]) -> tuple[str, ...]:
    """The command modules a command line needs: its command's. The root's options are all flags,
    so the first word that is not an option names the command; `--help`, `--version`, a missing or
    an unknown command need none (the root answers those from `COMMANDS`)."""
    name = next((argument for argument in argv if not argument.startswith("-")), None)
    return (COMMANDS[name][0],) if name in COMMANDS else ()
