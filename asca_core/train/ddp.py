"""Distributed data parallel helpers: torchrun environment, process group, sampler, launcher.

``asca train --nproc N`` re-executes itself through PyTorch's launcher
(``python -m torch.distributed.run --standalone --nproc_per_node N -m asca_core.cli train ...``);
each process reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and joins a gloo (CPU) or nccl
(CUDA) group. ``train.batch_size`` is per process, as in every torchrun script.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..augment import step_generator


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """The process's place in a torchrun job (a single process outside torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group: nccl for CUDA devices, gloo otherwise."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last training step of an epoch
    the ranks' statistics differ slightly; evaluation must see one model.
    """
    if not active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def barrier() -> None:
    if active():
        dist.barrier()


class EpochSampler(Sampler[Any]):
    """Shuffled (or class-balanced) order per epoch, sharded across ranks, resumable mid-epoch.

    The order depends only on ``(seed, epoch)``: ``set_epoch(e, skip=k)`` replays epoch ``e``
    without its first ``k`` items of this rank, which is how a run stopped mid-epoch resumes.
    With ``weights`` the epoch draws ``n`` items with replacement in proportion to them
    (WeightedRandomSampler); without, a permutation. Like DistributedSampler, the order is padded
    by wrapping so every rank gets the same number of items, and rank ``r`` takes ``r::world``.
    With ``tag_epoch`` it yields ``(epoch, index)`` pairs, which :class:`ClipDataset` reads, so
    DataLoader workers kept across epochs crop each epoch as the main process would.
    Shapes: weights (n,) or None.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        weights: torch.Tensor | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tag_epoch: bool = False,
    ) -> None:
        self.n = int(n)
        self.tag_epoch = bool(tag_epoch)
        self.shuffle = shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)

    @property
    def per_rank(self) -> int:
        return math.ceil(self.n / self.world_size)

    def order(self) -> list[int]:
        """This rank's full order for the current epoch (before ``skip``)."""
        gen = step_generator(self.seed, self.epoch, 0x5A3D1E)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=gen).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if total > len(order) and order:
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[Any]:
        order = self.order()[self.skip :]
        return iter([(self.epoch, i) for i in order] if self.tag_epoch else order)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


def shard(items: Sequence[int], env: DistEnv) -> list[int]:
    """Evaluation shard of this rank: every ``world_size``-th item, no padding."""
    return list(items[env.rank :: env.world_size])


def torchrun_command(nproc: int, cli_args: Sequence[str]) -> list[str]:
    """The command that re-runs ``asca <cli_args>`` in ``nproc`` processes under torchrun."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={int(nproc)}",
        "-m",
        "asca_core.cli",
        *cli_args,
    ]


__all__ = [
    "DistEnv",
    "EpochSampler",
    "active",
    "all_gather_objects",
    "any_rank",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "env_from_torchrun",
    "init_distributed",
    "shard",
    "shutdown_distributed",
    "torchrun_command",
]
