"""Convert musicnn's TensorFlow checkpoints to safetensors and record the original's outputs.

TensorFlow is never a musicguide dependency: run this once, in a throwaway environment,
whenever the weights or the reference fixture must be remade (it overwrites both):

    python3 -m venv /tmp/mnn
    /tmp/mnn/bin/pip install tensorflow-cpu tf-keras librosa soxr safetensors soundfile torch
    /tmp/mnn/bin/pip install --no-deps musicnn   # its numpy<1.17 pin is obsolete
    cd <repo root> && TF_USE_LEGACY_KERAS=1 /tmp/mnn/bin/python scripts/convert_musicnn.py

(torch: the CPU build is enough.) Last run with Python 3.11, tensorflow-cpu 2.21.0,
tf-keras 2.21.0, musicnn 0.1.0, librosa 0.11.0, numpy 2.4.6, soxr 1.1.0, torch 2.13.0+cpu.
It takes one to two minutes on two cores; rerun, it rewrites byte-identical files.

Writes
- musicguide/weights/musicnn_msd.safetensors, musicnn_mtt.safetensors: every trained variable
  of MSD_musicnn / MTT_musicnn (Adam slots dropped), renamed to musicguide.musicnn's modules,
  kernels transposed to torch's layout, float32; plus the mel filterbank the original used
  (librosa.filters.mel(sr=16000, n_fft=512, n_mels=96)); the metadata entry "config" holds
  the tag names as JSON.
- tests/fixtures/musicnn_reference.json: the original TensorFlow graph's outputs on every clip
  of ../shared/audio (or --audio-dir), and librosa's log-mel of a synthetic probe signal (so
  the front end is checked even where the shared clips are absent).

What the fixture holds. The original's own path from the file to the network: the 16 kHz
audio of librosa.load(path, sr=16000) (channel mean, then soxr HQ), exactly as musicnn's
extractor.batch_data loads it, and the log-mel that batch_data computes from it with librosa,
*except* that the log is taken in float32: the package casts the mel power to float16 first,
which overflows to inf on loud music (docs/musicnn.md). Nothing of musicguide's is used to make
it, so the tests that feed the port the 44.1 kHz clips check its resampler too, besides its
STFT, mel, log and network. Per clip and model it stores the per-patch tag probabilities (3 s
patches, no overlap: the original tagger's defaults), their mean, and the penultimate layer
averaged over patches (the embedding). The script prints how far the port, fed the 44.1 kHz
file, is from that, and how the package as it is (float16) tags each clip.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn builds with tf.compat.v1.layers
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the report

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from musicnn import configuration as musicnn_config  # noqa: E402
from musicnn import extractor as musicnn_extractor  # noqa: E402
from musicnn import models as musicnn_models  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from musicguide import musicnn as port  # noqa: E402

MODELS = {"MSD_musicnn": ("MSD", musicnn_config.MSD_LABELS), "MTT_musicnn": ("MTT", musicnn_config.MTT_LABELS)}

# TensorFlow named its layers by creation order in musicnn/models.py: front end
# (input norm, 2 timbral, 3 temporal), mid end (3 convs), back end (norm, dense, norm, dense).
BATCH_NORMS = {
    "batch_normalization": "input_norm",
    "batch_normalization_1": "timbral_narrow.norm",
    "batch_normalization_2": "timbral_wide.norm",
    "batch_normalization_3": "temporal_long.norm",
    "batch_normalization_4": "temporal_mid.norm",
    "batch_normalization_5": "temporal_short.norm",
    "batch_normalization_6": "midend.0.norm",
    "batch_normalization_7": "midend.1.norm",
    "batch_normalization_8": "midend.2.norm",
    "batch_normalization_9": "pool_norm",
    "batch_normalization_10": "dense_norm",
}
TIMBRAL_CONVS = {"conv2d": "timbral_narrow.conv", "conv2d_1": "timbral_wide.conv"}
# Both are conv1d over time in the port. The temporal kernels are (frames, 1 band, 1, filters);
# the mid end's span all features, (7, features, 1, filters), as its input had one channel.
TEMPORAL_CONVS = {"conv2d_2": "temporal_long.conv", "conv2d_3": "temporal_mid.conv", "conv2d_4": "temporal_short.conv"}
MIDEND_CONVS = {"conv2d_5": "midend.0.conv", "conv2d_6": "midend.1.conv", "conv2d_7": "midend.2.conv"}
DENSES = {"dense": "dense", "dense_1": "classifier"}
OPTIMIZER_STATE = ("beta1_power", "beta2_power")


def checkpoint_dir(name: str) -> str:
    """The wheel's checkpoint folder; the trailing slash because the files have an empty prefix."""
    return str(Path(musicnn_models.__file__).parent / name) + "/"


def convert(name: str) -> dict[str, np.ndarray]:
    """TF variables of one checkpoint -> a state dict for musicguide.musicnn.Musicnn."""
    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_dir(name))
    unused = {key for key in reader.get_variable_to_shape_map() if "Adam" not in key and key not in OPTIMIZER_STATE}

    def take(key: str) -> np.ndarray:
        unused.remove(key)
        return np.asarray(reader.get_tensor(key), dtype=np.float32)

    state: dict[str, np.ndarray] = {}
    for tf_name, torch_name in BATCH_NORMS.items():
        state[f"{torch_name}.weight"] = take(f"{tf_name}/gamma")
        state[f"{torch_name}.bias"] = take(f"{tf_name}/beta")
        state[f"{torch_name}.running_mean"] = take(f"{tf_name}/moving_mean")
        state[f"{torch_name}.running_var"] = take(f"{tf_name}/moving_variance")
        state[f"{torch_name}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    for tf_name, torch_name in TIMBRAL_CONVS.items():
        # (time, freq, in, out) -> (out, in, time, freq)
        state[f"{torch_name}.weight"] = take(f"{tf_name}/kernel").transpose(3, 2, 0, 1)
        state[f"{torch_name}.bias"] = take(f"{tf_name}/bias")
    for tf_name, torch_name in TEMPORAL_CONVS.items():
        # (time, 1, 1, out) -> (out, 1, time)
        state[f"{torch_name}.weight"] = take(f"{tf_name}/kernel")[:, 0, :, :].transpose(2, 1, 0)
        state[f"{torch_name}.bias"] = take(f"{tf_name}/bias")
    for tf_name, torch_name in MIDEND_CONVS.items():
        # (time, features, 1, out) -> (out, features, time)
        state[f"{torch_name}.weight"] = take(f"{tf_name}/kernel")[:, :, 0, :].transpose(2, 1, 0)
        state[f"{torch_name}.bias"] = take(f"{tf_name}/bias")
    for tf_name, torch_name in DENSES.items():
        state[f"{torch_name}.weight"] = take(f"{tf_name}/kernel").T  # (in, out) -> (out, in)
        state[f"{torch_name}.bias"] = take(f"{tf_name}/bias")
    if unused:
        raise RuntimeError(f"{name}: checkpoint variables left unconverted: {sorted(unused)}")
    state["log_mel.mel_filterbank"] = librosa.filters.mel(
        sr=musicnn_config.SR, n_fft=musicnn_config.FFT_SIZE, n_mels=musicnn_config.N_MELS
    ).astype(np.float32)
    return {key: value.copy(order="C") for key, value in state.items()}


def check_against_port(name: str, state: dict[str, np.ndarray]) -> None:
    """Same keys and shapes as the torch module, or the mapping above is wrong."""
    dataset, tags = MODELS[name]
    expected = port.Musicnn(port.MusicnnConfig(dataset=dataset, tags=tuple(tags))).state_dict()
    if set(expected) != set(state):
        raise RuntimeError(f"{name}: key mismatch {sorted(set(expected) ^ set(state))}")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != state[key].shape:
            raise RuntimeError(f"{name}: {key} is {state[key].shape} here, {tuple(tensor.shape)} in the port")


def float32_log_mel(audio_16k: np.ndarray) -> np.ndarray:
    """The log-mel of musicnn's extractor.batch_data, (frames, 96), minus its float16 cast."""
    mel = librosa.feature.melspectrogram(
        y=audio_16k,
        sr=musicnn_config.SR,
        hop_length=musicnn_config.FFT_HOP,
        n_fft=musicnn_config.FFT_SIZE,
        n_mels=musicnn_config.N_MELS,
    ).T
    return np.log10(10000 * mel.astype(np.float32) + 1)


def probe_signal() -> np.ndarray:
    """A quarter second at 16 kHz sweeping 0-8 kHz over a 100 Hz tone: it lights every mel band.

    tests/test_musicnn.py builds the same signal to check the torch log-mel without librosa.
    """
    time = np.arange(4000) / port.SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 16000 * time**2) + 0.3 * np.sin(2 * np.pi * 100 * time)).astype(np.float32)


def float32_patches(audio_16k: np.ndarray) -> np.ndarray:
    """musicnn's extractor.batch_data on 16 kHz mono audio, minus its float16 cast."""
    log_mel = float32_log_mel(audio_16k)
    n = port.PATCH_FRAMES
    return np.stack([log_mel[start : start + n] for start in range(0, log_mel.shape[0] - n + 1, n)])


class OriginalGraph:
    """The package's TF1 graph and session for one checkpoint, built as extractor.extractor does."""

    def __init__(self, name: str) -> None:
        tf.compat.v1.reset_default_graph()
        with tf.name_scope("model"):
            self.x = tf.compat.v1.placeholder(tf.float32, [None, port.PATCH_FRAMES, port.N_MELS])
            self.is_training = tf.compat.v1.placeholder(tf.bool)
            outputs = musicnn_models.define_model(self.x, self.is_training, name, len(MODELS[name][1]))
            self.probs = tf.nn.sigmoid(outputs[0])
            self.penultimate = outputs[-1]
        self.session = tf.compat.v1.Session()
        tf.compat.v1.train.Saver().restore(self.session, checkpoint_dir(name))

    def run(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 187, 96) log-mel -> per-patch probabilities (N, 50) and penultimate (N, 200)."""
        return self.session.run(
            [self.probs, self.penultimate], feed_dict={self.x: patches, self.is_training: False}
        )


def rounded(array: np.ndarray) -> list:
    return np.round(np.asarray(array, dtype=np.float64), 6).tolist()


def top(tags: list[str], probs: np.ndarray, n: int = 4) -> str:
    order = np.argsort(probs)[::-1][:n]
    return ", ".join(f"{tags[i]} {probs[i]:.2f}" for i in order)


def package_summary(tags: list[str], probs: np.ndarray) -> str:
    """The float16 taggram: how many patches the overflow turned into NaN, and what the rest say."""
    broken = np.isnan(probs).any(axis=1)
    summary = f"{int(broken.sum())} of {len(probs)} patches NaN"
    if not broken.all():
        summary += f"; the others: {top(tags, probs[~broken].mean(0))}"
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio-dir", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--fixture", type=Path, default=REPO / "tests" / "fixtures" / "musicnn_reference.json")
    args = parser.parse_args()
    tf.compat.v1.disable_eager_execution()
    # Every tf.compat.v1.layers call in musicnn/models.py warns that it is deprecated.
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed")

    port.WEIGHTS_DIR.mkdir(exist_ok=True)
    for name, filename in port.MUSICNN_MODELS.items():
        state = convert(name)
        check_against_port(name, state)
        dataset, tags = MODELS[name]
        # One metadata entry: safetensors orders several at random, and the file should be
        # byte-identical when the script is rerun.
        config = {"dataset": dataset, "tags": tags, "source": f"musicnn 0.1.0 {name} (ISC licence)"}
        save_file(state, str(port.WEIGHTS_DIR / filename), metadata={"config": json.dumps(config)})
        print(f"wrote {port.WEIGHTS_DIR / filename}")

    clip_paths = sorted(args.audio_dir.glob("*.ogg"))
    if not clip_paths:
        raise SystemExit(f"no .ogg clips in {args.audio_dir}")
    clips: dict[str, dict] = {}
    inputs: dict[str, dict[str, np.ndarray]] = {}
    for path in clip_paths:
        audio_16k, _ = librosa.load(path, sr=port.SAMPLE_RATE)  # the original's resampling path
        package_patches, _ = musicnn_extractor.batch_data(str(path), port.PATCH_FRAMES, port.PATCH_FRAMES)
        inputs[path.stem] = {"float32": float32_patches(audio_16k), "package": package_patches}
        clips[path.stem] = {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "sample_rate": soundfile.info(path).samplerate,
            "n_patches": len(inputs[path.stem]["float32"]),
        }

    for name in port.MUSICNN_MODELS:
        graph = OriginalGraph(name)
        tags = MODELS[name][1]
        torch_model = port.load_musicnn(name)
        print(f"\n{name}")
        for stem, patches in inputs.items():
            probs, penultimate = graph.run(patches["float32"])
            package_probs, _ = graph.run(patches["package"])
            clips[stem][name] = {
                "patch_probs": rounded(probs),
                "mean_probs": rounded(probs.mean(axis=0)),
                "embedding": rounded(penultimate.mean(axis=0)),
            }
            with torch.no_grad():
                audio, sample_rate = soundfile.read(args.audio_dir / f"{stem}.ogg", dtype="float32", always_2d=True)
                port_probs = torch_model.tag_probs(torch.from_numpy(audio.T.copy())[None], sample_rate)[0].numpy()
            print(
                f"  {stem}: port on the {sample_rate} Hz file vs original max |dp| "
                f"{np.abs(port_probs - probs).max():.1e} (mean probs {np.abs(port_probs - probs).mean(0).max():.1e}), "
                f"patch frames with inf in the package's float16 log-mel {int(np.isinf(patches['package']).any(axis=2).sum())}\n"
                f"    float32: {top(tags, probs.mean(0))}\n"
                f"    package as is (float16): {package_summary(tags, package_probs)}"
            )
        graph.session.close()

    versions = {
        package: importlib.metadata.version(package)
        for package in ("tensorflow-cpu", "tf-keras", "musicnn", "librosa", "numpy", "soxr", "torch")
    }
    fixture = {
        "about": "Original musicnn TF graph fed the float32 log-mel of librosa.load(path, sr=16000) audio "
        "(the original's resampling path: channel mean, soxr HQ); made by scripts/convert_musicnn.py. "
        "probe_log_mel: the original's float32 log-mel of convert_musicnn.probe_signal().",
        "versions": versions,
        "tags": {name: MODELS[name][1] for name in port.MUSICNN_MODELS},
        "probe_log_mel": rounded(float32_log_mel(probe_signal())),
        "clips": clips,
    }
    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    args.fixture.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"\nwrote {args.fixture} ({args.fixture.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
