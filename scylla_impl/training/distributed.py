"""Multi-process training through torch.distributed, as `torchrun` sets it up.

    torchrun --nproc-per-node 2 -m harness.cli train --method scylla ...

Each process reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the
environment torchrun gives it and joins one process group (gloo on CPU, NCCL on CUDA).
Without those variables training runs as a single process and every collective is a no-op.
Each rank takes its own slice of the same global batch; DDP averages the gradients.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks; returns the summed tensor where `tensor` lives. NCCL reduces only
        CUDA tensors, so a CPU tensor (the loop's float64 counters) makes the trip to the GPU."""
        if not self.enabled:
            return tensor
        if tdist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_device = tensor.to(f"cuda:{self.local_rank}")
            tdist.all_reduce(on_device, op=tdist.ReduceOp.SUM)
            return on_device.to(tensor.device)
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(module.parameters()).device.type == "cuda" else None
        # The frozen target parts live outside the module tree, so every parameter gets a gradient.
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def close(self) -> None:
        if self.initialised_here and tdist.is_initialized():
            tdist.destroy_process_group()


def init(device: str = "cpu") -> Dist:
    """Join the process group torchrun describes, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not tdist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        tdist.init_process_group(backend=backend)
        here = True
    return Dist(rank=rank, world=world, local_rank=local, initialised_here=here)


def device_for(dist: Dist, device: str) -> str:
    """cuda -> cuda:<local rank>; anything else unchanged."""
    return f"cuda:{dist.local_rank}" if device == "cuda" and dist.enabled else device
