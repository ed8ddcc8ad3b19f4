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

    ``groups`` (one label per index, e.g. 0 = visible, 1 = infrared): an identity's K images are split as
    evenly as possible over the groups it has, so every batch holds cross-modality positives (VI-ReID).
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0, groups: Sequence[int] | None = None):
        if p < 1 or k < 1:
            raise ValueError(f"PKSampler: P and K must be >= 1, got P={p}, K={k}")
        if groups is not None and len(groups) != len(pids):
            raise ValueError(f"PKSampler: {len(groups)} group labels for {len(pids)} images")
        self.index_by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
        for idx, pid in enumerate(pids):
            self.index_by_key[(int(pid), 0 if groups is None else int(groups[idx]))].append(idx)
        self.keys_of: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for key in sorted(self.index_by_key):
            self.keys_of[key[0]].append(key)
        if len(self.keys_of) < p:
            raise ValueError(f"PKSampler: P={p} identities per batch but only {len(self.keys_of)} exist")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.num_batches = max(1, len(pids) // (p * k))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        pid_list = sorted(self.keys_of)
        pools: dict[tuple[int, int], list[int]] = {key: [] for key in self.index_by_key}
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

    def _draw(self, pid: int, pools: dict[tuple[int, int], list[int]], gen: torch.Generator) -> list[int]:
        keys = self.keys_of[pid]
        counts = [len(range(i, self.k, len(keys))) for i in range(len(keys))]
        if len(keys) > 1:  # which group gets the odd image out varies from batch to batch
            shift = int(torch.randint(len(keys), (1,), generator=gen))
            counts = counts[shift:] + counts[:shift]
        drawn: list[int] = []
        for key, count in zip(keys, counts):
            drawn += self._draw_group(key, count, pools, gen)
        return drawn

    def _draw_group(self, key: tuple[int, int], k: int, pools: dict[tuple[int, int], list[int]],
                    gen: torch.Generator) -> list[int]:
        if k == 0:
            return []
        indices = self.index_by_key[key]
        if len(indices) < k:
            picks = torch.randint(len(indices), (k,), generator=gen).tolist()
            return [indices[i] for i in picks]
        pool = pools[key]
        if len(pool) < k:  # refill with a fresh permutation; leftovers go first so every image is used
            pool += [indices[i] for i in torch.randperm(len(indices), generator=gen).tolist()
                     if indices[i] not in pool]
        drawn, pools[key] = pool[:k], pool[k:]
        return drawn
