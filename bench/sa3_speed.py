"""SA3 Small's shape on a CPU: musicguide's infill against the reference's own `generate` with
inpainting, on the same random weights, in one run (issue 31); SA3 Medium's on a GPU.

    bash ../shared/tools/reference-sa3-env.sh /tmp/musicguide-sa3env
    python bench/sa3_speed.py --reference-python /tmp/musicguide-sa3env/bin/python [--threads 2]
    python bench/sa3_speed.py --shape medium --device cuda --out "$OUT"     # on a lent GPU

The shape is `models.sa3.sa3_small_config` (or `sa3_medium_config`; both reconstructed from the
model cards) without its T5Gemma conditioner, which neither side can build offline; random
weights, written once as a model folder that both sides load (float32 on a CPU; on a GPU
musicguide runs at `--precision`, default auto). The edit: 8 steps, a 4 s gap at 1:28-1:32 of a
3-minute song.

* musicguide: `musicguide infill song.wav --start 88 --end 92 --steps 8` through the CLI's code
  path in process, the model loaded beforehand (as `musicguide batch` holds it); it reads, edits a
  window of the song (at most the model's 2 minutes) and streams the 3-minute output to disk.
* the reference: `StableAudioModel.generate(inpaint_audio=…, inpaint_mask_start_seconds=…, …end…=…)`
  on the model's window of the song centred on the gap (the most it takes: it needs its whole input
  inside its window, so a user crops the song first), returning that clip re-decoded.

`--shape tiny` runs the same on `models.sa3.tiny_sa3_config` in a few seconds (a smoke test of the
script). The reference side runs only on the CPU, where its environment is built.

Each side runs in its own process; the table gives the edit's wall time (model loading excluded,
reported apart), the process's peak RSS and, on a GPU, the peak GPU memory. Prints a Markdown
table, and writes it to `--out`/sa3_speed.md when asked (for a short GPU lease).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE_PATH = [SHARED / "reference" / "stable-audio-3", SHARED / "tools" / "reference-shims"]
GAP = (88.0, 92.0)
SONG_SECONDS = 180.0
STEPS = 8


SHAPES = {"tiny": "tiny SA3 shape", "small": "SA3 Small shape (reconstructed)",
          "medium": "SA3 Medium shape (reconstructed)"}


def bench_config(shape: str) -> dict:
    from musicguide.models import sa3

    config = {"tiny": sa3.tiny_sa3_config, "small": sa3.sa3_small_config, "medium": sa3.sa3_medium_config}[shape]()
    conditioning = config["model"]["conditioning"]
    conditioning["configs"] = [c for c in conditioning["configs"] if c["type"] != "t5gemma"]
    config["model"]["diffusion"]["cross_attention_cond_ids"] = ["seconds_total"]
    return config


OURS = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})
from musicguide import Editor
started = time.perf_counter()
editor = Editor.from_pretrained({folder!r}, device={device!r}, precision={precision!r})
loaded = time.perf_counter()
# what `musicguide infill SONG --start A --end B --steps N --seed 1 -o OUT` runs once the model is loaded
with editor.infill({song!r}, {a}, {b}, steps={steps}, seed=1) as result:
    result.save({out!r}, overwrite=True)
if {device!r} == "cuda":
    torch.cuda.synchronize()
edited = time.perf_counter()
gpu = torch.cuda.max_memory_allocated() / 2**30 if {device!r} == "cuda" else None
print(json.dumps({{"load_s": loaded - started, "edit_s": edited - loaded, "gpu_gib": gpu,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

THEIRS = """
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
import numpy as np
from safetensors.torch import load_file
from stable_audio_3.factory import create_diffusion_cond_from_config
from stable_audio_3.model import StableAudioModel
config = json.load(open({config!r}))
started = time.perf_counter()
model = create_diffusion_cond_from_config(config).eval().requires_grad_(False)
model.load_state_dict(load_file({weights!r}), strict=True)
wrapper = StableAudioModel(model, config, "cpu", False)
loaded = time.perf_counter()
audio, rate = np.load({song_npy!r}), 44100  # the same samples as the WAV (its environment has no soundfile)
first = max(0.0, ({a} + {b}) / 2 - {window} / 2)  # the window centred on the gap
clip = torch.from_numpy(audio[int(first * rate) : int(first * rate) + int({window} * rate)].T.copy())
out = wrapper.generate(conditioning=[{{"seconds_total": {window}}}], duration={window}, steps={steps}, seed=1,
                       inpaint_audio=(rate, clip), inpaint_mask_start_seconds={a} - first,
                       inpaint_mask_end_seconds={b} - first, sample_size=config["sample_size"])
edited = time.perf_counter()
print(json.dumps({{"load_s": loaded - started, "edit_s": edited - loaded,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run(python: str, script: str, env: dict | None = None) -> dict:
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", default=os.environ.get("MUSICGUIDE_SA3_REFERENCE_PYTHON"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="auto", help="musicguide's --precision on a GPU (float32 on a CPU)")
    parser.add_argument("--out", type=Path, help="a folder to write the table to (sa3_speed.md)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np
    import soundfile as sf
    import torch

    from conftest import synth_song
    from musicguide.models.folder import save_model_folder
    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        config = bench_config(args.shape)
        torch.manual_seed(0)
        save_model_folder(SA3Model(sa3_config_from_dict(config)), work / "model")
        (work / "config.json").write_text(json.dumps(config))
        song = work / "song.wav"
        sf.write(song, np.tile(synth_song(10.0), (int(SONG_SECONDS / 10), 1)), 44100, subtype="PCM_16")
        np.save(work / "song.npy", sf.read(song, dtype="float32", always_2d=True)[0])
        fields = dict(threads=args.threads, song=str(song), a=GAP[0], b=GAP[1], steps=STEPS)
        precision = args.precision if args.device == "cuda" else "fp32"
        rows = {"musicguide": run(sys.executable, OURS.format(repo=str(REPO), folder=str(work / "model"),
                                                              out=str(work / "out.wav"), device=args.device,
                                                              precision=precision, **fields))}
        if args.reference_python and args.device == "cpu":
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, REFERENCE_PATH))}
            window = config["sample_size"] / 44100 - 0.1  # inside the window, with its duration padding
            rows["stable-audio-3 generate"] = run(args.reference_python, THEIRS.format(
                config=str(work / "config.json"), weights=str(work / "model" / "model.safetensors"),
                window=round(window, 3), song_npy=str(work / "song.npy"), **fields), env)
    where = (f"{torch.cuda.get_device_name()}, --precision {precision}" if args.device == "cuda"
             else f"float32, CPU, {args.threads} threads")
    lines = [f"{SHAPES[args.shape]}, random weights, {where}: "
             f"{STEPS}-step infill of {GAP[1] - GAP[0]:g} s in a {SONG_SECONDS / 60:g}-minute song", "",
             "| implementation | edit | model load | peak RSS | peak GPU memory |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        gpu = f"{row['gpu_gib']:.1f} GiB" if row.get("gpu_gib") is not None else "–"
        lines.append(f"| {name} | {row['edit_s']:.1f} s | {row['load_s']:.1f} s | {row['peak_mib']:.0f} MiB | {gpu} |")
    if len(rows) == 2:
        ours, theirs = rows.values()
        lines += ["", f"ratio (musicguide / reference): {ours['edit_s'] / theirs['edit_s']:.2f}"]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sa3_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
