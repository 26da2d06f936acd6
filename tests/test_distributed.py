"""Training under torchrun: DistributedDataParallel over gloo on CPU, against one process.

The shard tests are pure arithmetic. The slow ones launch real processes, as a user would:
`torchrun --standalone --nproc_per_node 2 -m musicguide train ...` against `python -m musicguide
train ...` with the same global batch, both with OMP_NUM_THREADS=1. Two processes must train the
parameters one process trains (up to the order of float sums), and a checkpoint written by two
processes must resume with one exactly as one written by one process does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicguide.distributed import World
from musicguide.errors import UserError
from musicguide.models import load_model_folder
from musicguide.train.shard import Shard, StepRandom

RATE = 44100
TORCHRUN = Path(sys.executable).parent / "torchrun"


# --- Shards: the same examples whatever the number of processes ---------------------------------

WEIGHTS = [3.0, 1.0, 2.0, 5.0, 0.5, 1.5]


def slots_drawn(processes: int, batch: int = 12) -> list[tuple[int, float]]:
    """(track, fraction) of every slot of one step, gathered over the processes in rank order."""
    u = StepRandom(7, 3, range(batch), batch, torch.device("cpu")).uniform()
    drawn = []
    for rank in range(processes):
        shard = Shard(WEIGHTS, batch, World(rank, processes))
        local, fraction = shard.locate(u[shard.slots.start:shard.slots.stop])
        drawn += [(shard.tracks[i], f) for i, f in zip(local.tolist(), fraction.tolist())]
    return drawn


@pytest.mark.parametrize("processes", [2, 3, 4, 6, 12])
def test_every_process_count_draws_the_examples_one_process_draws(processes):
    assert slots_drawn(processes) == slots_drawn(1)


def test_each_process_holds_a_contiguous_part_and_each_track_has_one_owner():
    shards = [Shard(WEIGHTS, 4, World(rank, 4)) for rank in range(4)]
    assert [len(s.slots) for s in shards] == [1] * 4
    assert sorted(t for s in shards for t in s.owned) == list(range(len(WEIGHTS)))
    for s in shards:
        assert s.tracks == list(range(s.tracks[0], s.tracks[-1] + 1)) and set(s.owned) <= set(s.tracks)
    # 13 units of audio over 4 slots: no process needs all of it
    assert max(len(s.tracks) for s in shards) < len(WEIGHTS)


def test_a_slot_draws_in_proportion_to_track_length():
    shard = Shard([1.0, 3.0], 2, World(0, 1))
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tracks = torch.cat([shard.locate(u[i:i + 2])[0] for i in range(0, 4000, 2)])
    assert (tracks == 1).double().mean().item() == pytest.approx(0.75, abs=0.03)


def test_a_slots_random_numbers_depend_on_seed_step_and_slot_only():
    def draws(step: int, slots: range) -> list[torch.Tensor]:
        random = StepRandom(0, step, slots, 4, torch.device("cpu"))
        return [random.uniform(), random.coin(), random.normal(3, 4), random.each(lambda n, g: torch.rand(n, generator=g))]

    for whole, part in zip(draws(5, range(4)), draws(5, range(2, 4))):
        assert torch.equal(whole[2:], part)
    assert not torch.equal(draws(6, range(4))[0], draws(5, range(4))[0])


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(UserError, match="batch"):
        Shard(WEIGHTS, 3, World(0, 2))


# --- Real runs: torchrun against one process ------------------------------------------------------

def train(stage: str, data: Path, out: Path, processes: int, *options: str) -> None:
    launcher = [sys.executable] if processes == 1 else [str(TORCHRUN), "--standalone", "--nproc_per_node",
                                                        str(processes)]
    command = [*launcher, "-m", "musicguide", "train", stage, str(data), "--out", str(out), "--preset", "tiny",
               "--device", "cpu", "--quiet", *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def trained(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["trained"]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum((a[k].double() - b[k].double()).square().sum().item() for k in a))


def history(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "train_log.json").read_text())["history"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A tiny corpus, and each stage trained 3 steps by one process and by two."""
    if not TORCHRUN.is_file():
        pytest.skip(f"no torchrun beside {sys.executable}")
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    (root / "songs").mkdir()
    for i, seconds in enumerate([1.6, 2.3, 1.1, 2.9, 1.7]):  # lengths that put shard edges inside tracks
        t = np.arange(int(seconds * RATE)) / RATE
        left = 0.2 * np.sin(2 * np.pi * (180 + 40 * i) * t + rng.uniform(0, 6)) * np.exp(-3 * (t % 0.5))
        sf.write(root / "songs" / f"song_{i}.wav", np.stack([left, np.roll(left, 40)], axis=1), RATE)
    for processes in (1, 2):
        train("vae", root / "songs", root / f"vae-{processes}", processes, "--steps", "3")
        train("dit", root / "songs", root / f"dit-{processes}", processes, "--steps", "3", "--vae", root / "vae-1")
    return root


@pytest.mark.slow
def test_two_processes_train_the_dit_that_one_process_trains(runs):
    one, two = runs / "dit-1", runs / "dit-2"
    assert distance(trained(one), trained(two)) < 1e-4
    assert history(two) == pytest.approx(history(one), rel=1e-5)
    logs = [json.loads((out / "train_log.json").read_text()) for out in (one, two)]
    assert logs[1]["world_size"] == 2 and logs[1]["batch_per_process"] * 2 == logs[0]["batch_per_process"]
    assert logs[1]["latent_scale"] == pytest.approx(logs[0]["latent_scale"], rel=1e-9)  # measured over both shards
    exported = [load_model_folder(out).state_dict() for out in (one, two)]
    assert distance(*exported) < 1e-3  # fp16 weights


@pytest.mark.slow
def test_two_processes_train_the_vae_that_one_process_trains(runs):
    """Adam turns float-order noise in near-zero gradients into steps of up to lr, so the VAE's
    weights agree to a few percent of how far they moved, not to float precision."""
    from musicguide.models import build_model
    from musicguide.models.presets import preset_config

    torch.manual_seed(0)
    start = {k: v for k, v in build_model(preset_config("tiny")).state_dict().items() if k.startswith("pretransform.")}
    one, two = trained(runs / "vae-1"), trained(runs / "vae-2")
    assert distance(one, two) < 0.1 * distance(one, start)
    assert history(runs / "vae-2")[0] == pytest.approx(history(runs / "vae-1")[0], rel=1e-3)


@pytest.mark.slow
def test_a_run_of_two_processes_resumes_with_one(runs, tmp_path):
    for processes in (1, 2):
        shutil.copytree(runs / f"dit-{processes}", tmp_path / f"from-{processes}")
        train("dit", runs / "songs", tmp_path / f"from-{processes}", 1, "--steps", "5", "--vae", runs / "vae-1",
              "--resume")
    resumed = [tmp_path / f"from-{processes}" for processes in (1, 2)]
    for out in resumed:
        log = json.loads((out / "train_log.json").read_text())
        assert log["resumed_at"] == [3] and log["result"]["step"] == 5 and log["world_size"] == 1
    # The data position is the step: one process continues where two stopped, as it would its own run.
    assert distance(trained(resumed[0]), trained(resumed[1])) < 1e-4
