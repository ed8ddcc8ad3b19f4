"""PK sampling: every batch holds P identities with K images each, so batch-hard triplets always exist."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class PKSampler(Sampler[list[int]]):
    """A batch sampler over ``pids`` (one label per dataset index).

    Identities are drawn, P distinct at a time, from a stream of shuffled cycles over all identities, so
    within an epoch their visit counts differ by at most one. Each identity's images are drawn from its own shuffled pool; one with
    fewer than K images is sampled with replacement. One epoch = ``len(pids) // (P*K)`` batches (at least 1),
    seeded by ``seed + epoch`` (call :meth:`set_epoch`).
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0):
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: P and K must be >= 1, got P={p}, K={k}")
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for idx, pid in enumerate(pids):
            self.index_by_pid[int(pid)].append(idx)
        if len(self.index_by_pid) < p:
            raise ValueError(f"PKSampler: P={p} identities per batch but only {len(self.index_by_pid)} exist")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.num_batches = max(1, len(pids) // (p * k))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        pid_list = sorted(self.index_by_pid)
        pools: dict[int, list[int]] = {pid: [] for pid in pid_list}
        order: list[int] = []
        for _ in range(self.num_batches):
            if len(set(order)) < self.p:
                order += [pid_list[i] for i in torch.randperm(len(pid_list), generator=gen).tolist()]
            chosen = []
            for pid in order:  # the first P distinct identities of the stream of shuffled cycles
                if pid not in chosen:
                    chosen.append(pid)
                    if len(chosen) == self.p:
                        break
            for pid in chosen:
                order.remove(pid)
            batch = []
            for pid in chosen:
                batch += self._draw(pid, pools, gen)
            yield batch

    def _draw(self, pid: int, pools: dict[int, list[int]], gen: torch.Generator) -> list[int]:
        indices = self.index_by_pid[pid]
        if len(indices) < self.k:
            picks = torch.randint(len(indices), (self.k,), generator=gen).tolist()
            return [indices[i] for i in picks]
        pool = pools[pid]
        if len(pool) < self.k:  # refill with a fresh permutation; leftovers go first so every image is used
            pool += [indices[i] for i in torch.randperm(len(indices), generator=gen).tolist()
                     if indices[i] not in pool]
        drawn, pools[pid] = pool[:self.k], pool[self.k:]
        return drawn
