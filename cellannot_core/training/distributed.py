"""Data-parallel training across processes and machines on PyTorch's own engine (torch.distributed).

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous):

    torchrun --nproc_per_node 2 -m cellannot_core train --reference ref.h5ad --label-key cell_type --save-model m/
    # two machines, 4 GPUs each (run on both, node_rank 0 and 1):
    torchrun --nnodes 2 --nproc_per_node 4 --node_rank 0 --rdzv-backend c10d \
        --rdzv-endpoint host0:29500 -m cellannot_core train ... --device auto

Every process reads the same data and builds the same model from the same seed; each epoch's
shuffled order (the same on every process) is split into one shard per process, as
``DistributedSampler`` does, each process taking ``batch_size / N`` cells per step (the model's
batch size is the global one), and after each backward pass the gradients are averaged over the
processes with one all-reduce (DistributedDataParallel's rule: every process then takes the
same optimiser step, so the weights stay identical). Buffers (batch-norm statistics) are
broadcast from rank 0 before each validation, so early stopping decides the same everywhere;
the loss check and the time budget are agreed by all-reduce, so no process waits for one that
stopped. Backend: NCCL when the device is CUDA (each process on GPU ``LOCAL_RANK``), gloo on
CPU. Only rank 0 writes the model bundle and logs.

Why not wrap the network in ``DistributedDataParallel``: DDP synchronises gradients for what
runs through the wrapped module's ``forward``, and a step here may call several methods of the
network and step several optimisers with their own losses (energy model and generator); an
all-reduce after each backward is DDP's synchronisation without that constraint, for every
torch model and every loss.
"""
from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a distributed launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes (idempotent); returns the device to use
    (``cuda:LOCAL_RANK`` on GPUs). Without a launcher nothing happens and ``device`` is returned."""
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        return device
    cuda = torch.cuda.is_available() and (device == "auto" or str(device).lower().startswith("cuda"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return "cuda" if cuda else "cpu"


def local_batch(batch_size: int) -> int:
    """A process's share of the mini-batch: ``batch_size`` is the global one (the gradient of a
    step averages ``batch_size`` cells over all processes, as in one process), so a model's
    batch size, learning rate and steps per epoch mean the same at any number of processes."""
    return max(1, int(batch_size) // world()[1])


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one epoch over ``n`` cells (the same on every process)."""
    import math

    return max(1, math.ceil((n // world()[1]) / local_batch(batch_size)))


def shard(perm: torch.Tensor) -> torch.Tensor:
    """This process's share of an epoch's order: every ``world``-th index from its rank, all
    shards of equal length (up to ``world - 1`` cells of the epoch are left out, as
    ``DistributedSampler(drop_last=True)``)."""
    rank, size = world()
    if size == 1:
        return perm
    return perm[rank::size][: len(perm) // size]


def average_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Average the gradients of ``params`` and the loss over all processes (one all-reduce);
    returns the averaged loss, so every process judges divergence alike."""
    import torch.distributed as dist

    _, size = world()
    if size == 1:
        return loss.detach()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= size
    i = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[i:i + n].view_as(g).clone()
        i += n
    return flat[-1]


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a time budget ran out on one)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) to every process."""
    import torch.distributed as dist

    if world()[1] == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)
