"""Which examples make up each step's batch, the same whatever the number of processes.

The training tracks are laid end to end (in the corpus's order) and cut into `batch` equal
stretches, one per slot of the global batch: slot j of every step draws its crop from stretch j
(uniformly within it, so longer tracks are seen in proportion). Under torchrun the N processes
split the slots in N contiguous ranges, so each process draws only from its 1/N of the audio and
decodes only the tracks that overlap it: its shard. Alone, one process fills every slot.

Every random number of step s (where each crop starts, its flips, its noise, its t) comes from
generators seeded by (seed, s), drawn for the whole global batch in every process, never from a
stream that runs across steps. So:
- a run with N processes draws exactly the examples that a run with one process draws, and its
  averaged gradients are the same (up to the order of float sums);
- the data position of a run is its step: resuming at step s, with any N, continues the same
  sequence of batches that an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from musicguide.distributed import World
from musicguide.errors import UserError


def _seeds(*entropy: int, count: int = 1) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(list(entropy)).generate_state(count, np.uint64)]


class Shard:
    """This process's slots of every global batch, and the tracks (by index) they draw from."""

    def __init__(self, weights: Sequence[float], batch: int, here: World):
        if batch % here.size:
            raise UserError(f"--batch-size {batch} does not split evenly across {here.size} processes",
                            hint="the batch size is global: make it a multiple of the number of processes")
        per_rank = batch // here.size
        self.batch, self.slots = batch, range(here.rank * per_rank, (here.rank + 1) * per_rank)
        weights = torch.tensor([float(w) for w in weights], dtype=torch.float64)
        if not len(weights) or weights.sum() <= 0:
            raise UserError("no training audio: every training file is empty")
        self.ends = torch.cumsum(weights, 0)
        self.starts = self.ends - weights
        self.total = float(self.ends[-1])
        low, high = self._edge(self.slots.start), self._edge(self.slots.stop)
        self.tracks = [i for i in range(len(weights)) if self.starts[i] < high and self.ends[i] > low]
        # Each track is owned by the one process whose stretch holds its start (for statistics).
        self.owned = [i for i in self.tracks if low <= self.starts[i] < high]
        self._local = {track: n for n, track in enumerate(self.tracks)}

    def _edge(self, slot: int) -> float:
        return slot * self.total / self.batch

    def locate(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """For a uniform u in [0, 1) per slot of this process: the track (its position in `tracks`)
        and how far into it (a fraction in [0, 1)) the slot's point falls."""
        slots = torch.tensor(list(self.slots), dtype=torch.float64)
        point = (slots + u.double()) * self.total / self.batch
        index = torch.searchsorted(self.ends, point, right=True).clamp(self.tracks[0], self.tracks[-1])
        fraction = ((point - self.starts[index]) / (self.ends[index] - self.starts[index])).clamp(0, 1 - 1e-12)
        local = torch.tensor([self._local[int(i)] for i in index])
        return local, fraction

    def random(self, seed: int, step: int, device: torch.device) -> StepRandom:
        return StepRandom(seed, step, self.slots, self.batch, device)


class StepRandom:
    """The random numbers of one step. Each draw is made for the whole global batch, in the same
    order in every process, from generators seeded by (seed, step), and each process keeps the rows
    of its own slots: the numbers of a slot do not depend on which process fills it. (Drawing the
    whole batch costs every process batch-sized draws, which is one kernel for the noise; far less
    than a generator per slot.) Small draws come from a CPU generator, noise from one on the
    training device."""

    def __init__(self, seed: int, step: int, slots: range, batch: int, device: torch.device):
        cpu_seed, device_seed = _seeds(seed, step, count=2)
        self.cpu = torch.Generator().manual_seed(cpu_seed)
        self.device_generator = torch.Generator(device).manual_seed(device_seed)
        self.slots, self.batch, self.device = slice(slots.start, slots.stop), batch, device

    def uniform(self) -> Tensor:
        """[slots] float64 in [0, 1), on the CPU."""
        return torch.rand(self.batch, generator=self.cpu, dtype=torch.float64)[self.slots]

    def coin(self) -> Tensor:
        """[slots] booleans, on the CPU."""
        return (torch.rand(self.batch, generator=self.cpu) < 0.5)[self.slots]

    def normal(self, *shape: int) -> Tensor:
        """[slots, *shape] standard normal, on the training device."""
        noise = torch.randn((self.batch, *shape), generator=self.device_generator, device=self.device)
        return noise[self.slots]

    def each(self, draw: Callable[[int, torch.Generator], Tensor]) -> Tensor:
        """[slots, ...]: `draw(batch, generator)` with the CPU generator, for the whole batch."""
        return draw(self.batch, self.cpu)[self.slots]
