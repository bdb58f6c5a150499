"""Training on shards: each rank, and each loader worker in it, streams its own shards.

One epoch, for rank r of W with K loader workers:

1. the shards are permuted by (seed, epoch); rank r takes every W-th from position r, and its
   worker w every K-th of those from position w: disjoint sets, whole shards each;
2. the epoch has `len(train) // global_batch` steps on every rank (the loop's own count); a
   rank's batches are shared among its workers in proportion to the samples their shards hold,
   and a worker whose shards run out before its share starts them again (a new shuffle);
3. a worker reads its shards in order into a shuffle buffer of `BUFFER` samples, seeded by
   (seed, epoch, rank, worker), and cuts each sample's views with the generator of
   (seed, epoch, sample id), as the folder dataset does with the image index;
4. a sample whose image cannot be decoded is listed in skipped.txt and another sample of the
   buffer, drawn by a generator of its own id, takes its place, so every worker still yields
   its share and every rank the same number of steps.

Resume: the stream of the interrupted epoch is replayed from its start, and the samples the
steps before the stop used are passed over unread (not decoded, not cropped). With the same
number of processes, --workers and --batch-size this is exact: the same samples in the same
order with the same views. With another number, the epoch's shards are dealt out again, so in
that epoch some samples are seen a second time and others not at all; later epochs are whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lejepa_cli.data.dataset import _transform_failure, collate_multicrop
from lejepa_cli.data.decode import DecodeError
from lejepa_cli.data.shards import RawSample, ShardSet, image_member, iter_samples, load_rgb_bytes
from lejepa_cli.errors import DataError, UnreadableDataError

BUFFER = 1000  # samples in each worker's shuffle buffer (their encoded bytes are held)
MAX_RETRIES = 20  # substitutes tried for one undecodable sample before giving up


def check_shards_per_rank(shards: ShardSet, world_size: int) -> None:
    """Every process streams shards of its own: fewer training shards than processes is a
    DataError that says how to write more."""
    if len(shards.shards) < world_size:
        raise DataError(
            f"{len(shards.shards)} shards cannot give each of the {world_size} "
            "processes its own: write more, smaller shards (lejepa shard --shard-size)"
        )


class ShardStream(IterableDataset):
    """Yields {"global_crops", "local_crops", "index", "skipped"} like MultiCropDataset, for
    the epoch and position set by `epoch_loader`."""

    def __init__(self, shards: ShardSet, transform, seed: int, dist, buffer: int = BUFFER):
        check_shards_per_rank(shards, dist.world_size)
        self.shards = shards
        self.transform = transform
        self.seed, self.rank, self.world = int(seed), dist.rank, dist.world_size
        self.buffer = max(1, int(buffer))
        self.epoch = 0
        self._plan = (1, 0, 1)  # (local batch, batches done before, steps) of the epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_loader(self, local_batch: int, start_batch: int, workers: int, pin_memory: bool):
        """The DataLoader of this rank for the current epoch, from batch `start_batch` on."""
        steps = len(self.shards) // (local_batch * self.world)
        self._plan = (int(local_batch), int(start_batch), steps)  # workers get a copy
        return torch.utils.data.DataLoader(
            self,
            batch_size=local_batch,
            num_workers=workers,
            collate_fn=collate_multicrop,
            pin_memory=pin_memory,
        )

    def describe(self) -> str:
        """The train.log line that says how the shards are read and what a resume repeats."""
        n, kind = len(self.shards.shards), "counted" if self.shards.counted else "declared"
        return (
            f"shards: {n} shards, {len(self.shards)} training samples ({kind}); every epoch "
            f"each process streams its own shards, each loader worker its own part of them, "
            f"through a {self.buffer}-sample shuffle buffer. A resume replays the interrupted "
            "epoch's stream and passes over the samples already trained on without decoding "
            "them: exact with the same processes, --workers and --batch-size; with others, "
            "that epoch's shards are dealt out again, so some of its samples are seen twice and "
            "others not at all (later epochs are whole)"
        )

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        local_batch, start_batch, steps = self._plan
        part, mine, batches, done = worker_plan(
            self.shards, self.seed, self.epoch, self.rank, self.world, worker, workers,
            steps, start_batch,
        )  # fmt: skip
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, part])
        pool = _Pool()
        stream = islice(_passes(mine, self.buffer, rng, pool), batches * local_batch)
        for k, raw in enumerate(stream):
            if k >= done * local_batch:  # before: trained on before the resume, left unread
                yield self._views(raw, pool)

    def _views(self, raw: RawSample, pool: _Pool) -> dict:
        """The crops of one sample, or of substitutes from the buffer when it is unusable."""
        skipped: list[tuple[str, str]] = []
        draw = np.random.default_rng([self.seed, self.epoch, raw.sample_id, 1])
        for _ in range(MAX_RETRIES + 1):
            try:
                return {**self._crops(raw), "index": raw.sample_id, "skipped": skipped}
            except DecodeError as exc:
                skipped.append((raw.name, exc.reason))
            except Exception as exc:  # noqa: BLE001 - decoded, but no views could be cut
                skipped.append((raw.name, _transform_failure(exc)))
            raw = pool.draw(draw) or raw
        raise UnreadableDataError(
            f"{len(skipped)} samples in a row could not be read (last: {skipped[-1][0]}: "
            f"{skipped[-1][1]}); the shards of {self.shards.root} have too many bad samples. "
            f"Run `lejepa inspect {self.shards.root}` to list them"
        )

    def _crops(self, raw: RawSample) -> dict:
        if raw.error is not None:
            raise DecodeError(raw.error)
        _, data = image_member(raw)
        img = load_rgb_bytes(data, min_side=self.transform.min_source_side)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, raw.sample_id]))
        return self.transform(img, rng)


class _Pool:
    """The samples of the shuffle buffer under way, where substitutes are drawn from."""

    def __init__(self):
        self.items: list[RawSample] = []

    def draw(self, rng: np.random.Generator) -> RawSample | None:
        return self.items[int(rng.integers(len(self.items)))] if self.items else None


def worker_plan(
    shards: ShardSet, seed: int, epoch: int, rank: int, world: int, worker: int, workers: int,
    steps: int, start_batch: int,
) -> tuple[int, list, int, int]:  # fmt: skip
    """(the part this loader worker plays, its shards, its batches this epoch, how many of
    them came before `start_batch`), from the epoch's deal in the module docstring.

    A resumed loader asks its workers for batches in turn from worker 0 again, while the
    interrupted one would have gone on from the worker after the last to deliver: so loader
    worker w plays the part of worker (w + that one) mod K, and the order carries on.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(shards.shards))
    per_worker = [
        [shards.shards[i] for i in order[rank::world][w::workers]] for w in range(workers)
    ]
    available = [sum(s.samples - s.skip for s in own) for own in per_worker]
    shares = split_batches(steps, available)
    before, turn = batches_before(shares, start_batch)
    part = (worker + turn) % workers
    return part, per_worker[part], shares[part], before[part]


def split_batches(steps: int, available: list[int]) -> list[int]:
    """`steps` batches shared in proportion to `available` (largest remainders first)."""
    total = sum(available)
    if total == 0:
        return [0] * len(available)
    exact = [steps * a / total for a in available]
    shares = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda w: (shares[w] - exact[w], w))
    for w in by_remainder[: steps - sum(shares)]:
        shares[w] += 1
    return shares


def batches_before(shares: list[int], start_batch: int) -> tuple[list[int], int]:
    """How many of the first `start_batch` batches each worker gave, and whose turn is next:
    the DataLoader takes batches from its workers in turn, passing over those that are done."""
    done = [0] * len(shares)
    left, turn = min(int(start_batch), sum(shares)), 0
    while left:
        for w, share in enumerate(shares):
            if left and done[w] < share:
                done[w] += 1
                left -= 1
                turn = (w + 1) % len(shares)
    return done, turn


def _passes(shards: list, size: int, rng: np.random.Generator, pool: _Pool) -> Iterator:
    """The worker's samples through the shuffle buffer, pass after pass over its shards."""
    while shards:
        yielded = 0
        for raw in _shuffled(_one_pass(shards), size, rng, pool):
            yielded += 1
            yield raw
        if not yielded:
            names = ", ".join(s.name for s in shards[:3])
            raise UnreadableDataError(
                f"the shards {names} gave no readable sample; check them with `lejepa inspect`"
            )


def _one_pass(shards: list) -> Iterator[RawSample]:
    """Samples of the shards in order; a tar that breaks off is reported once, as a sample
    that cannot be decoded would be."""
    for shard in shards:
        yield from iter_samples(shard)


def _shuffled(source, size: int, rng: np.random.Generator, pool: _Pool) -> Iterator[RawSample]:
    """A shuffle buffer: fill to `size`, then yield a random held sample for each new one."""
    items = pool.items = []
    for raw in source:
        if raw.error is not None:
            yield raw  # the reader turns it into a skipped.txt line and a substitute
            continue
        if len(items) < size:
            items.append(raw)
            continue
        j = int(rng.integers(size))
        items[j], raw = raw, items[j]
        yield raw
    rng.shuffle(items)
    while items:
        yield items.pop()
