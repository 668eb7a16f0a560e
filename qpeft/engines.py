"""How an optimisation step is run: plain/DDP PyTorch on CPUs, DeepSpeed ZeRO on GPUs.

Both engines wrap only the `QPeftModel`, whose registered parameters are the adapter's: the
frozen LM lives outside it (in `Backbone`), so DDP never broadcasts it and ZeRO shards
only the trainable module, its gradients and optimiser state. The frozen LM is replicated
on each GPU in bf16.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from qpeft.model import QPeftModel
from qpeft.training import TrainSettings, load_optimizer, make_optimizer, save_optimizer


@dataclass
class AllReduceCounter:
    bytes: int = 0


def counting_allreduce(counter: AllReduceCounter, bucket):
    """DDP's own all-reduce of a gradient bucket, counting its bytes on the way."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


class TorchEngine:
    """AdamW + schedule + gradient clipping; DistributedDataParallel when world > 1."""

    def __init__(
        self, qpeft: QPeftModel, settings: TrainSettings, total_steps: int, distributed: bool
    ):
        self.qpeft = qpeft
        self.params = [p for p in qpeft.adapter.parameters() if p.requires_grad]
        self.settings = settings
        self.distributed = distributed
        # The adapter's buffers (token ids) never change: nothing to broadcast each step.
        self.module = (
            torch.nn.parallel.DistributedDataParallel(qpeft, forward_sync_buffers=False)
            if distributed
            else qpeft
        )
        # Gradient bytes this rank has all-reduced: the cost that the sparse E' cuts.
        self.allreduced = AllReduceCounter()
        if distributed:
            self.module.register_comm_hook(self.allreduced, counting_allreduce)
        self.optimizer, self.scheduler = make_optimizer(qpeft.adapter, settings, total_steps)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # DDP synchronises once per step, whatever each rank does before: a query group over
    # the token budget may run in two passes, and ranks need not match micro-batch counts.
    splits_groups = True

    def padding_micro_batches(self, count: int) -> int:
        return 0

    @contextlib.contextmanager
    def micro_step(self, last: bool):
        """Forward and backward of one micro-batch; gradients are all-reduced on the last."""
        if self.distributed and not last:
            with self.module.no_sync():
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        """Clip, update and clear the gradients accumulated since the last step."""
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def gathered(self):
        """Context in which the adapter's full weights are readable (trivial here)."""
        return contextlib.nullcontext()

    def save_state(self, directory: Path, rank: int) -> None:
        if rank == 0:
            save_optimizer(directory, self.optimizer, self.scheduler)

    def load_state(self, directory: Path) -> None:
        load_optimizer(directory, self.optimizer, self.scheduler)


class DeepSpeedEngine:
    """DeepSpeed ZeRO (stage 2 by default, 3 to partition the adapter's parameters too)."""

    def __init__(
        self,
        qpeft: QPeftModel,
        settings: TrainSettings,
        total_steps: int,
        stage: int,
        bf16: bool,
        world_size: int,
    ):
        try:
            import deepspeed
        except ImportError as e:
            raise ImportError(
                "training on GPUs (scaling.use_gpu: true) runs DeepSpeed, which is not "
                "installed: pip install 'qpeft-ray[gpu]'"
            ) from e

        # Skip two JIT-compiled ops (~95 s each) that this setup does not need.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.qpeft = qpeft
        self.stage = stage
        optimizer, scheduler = make_optimizer(qpeft.adapter, settings, total_steps)
        config = {
            "train_micro_batch_size_per_gpu": settings.queries_per_batch,
            "gradient_accumulation_steps": 1,
            "train_batch_size": settings.queries_per_batch * world_size,
            "gradient_clipping": settings.grad_clip,
            "bf16": {"enabled": bf16},
            "zero_optimization": {"stage": stage},
            "steps_per_print": 10**9,
        }
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=qpeft, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # ZeRO reduces gradients (and, at stage 3, gathers parameters) inside every forward and
    # backward: every rank must run the same sequence of them. So no two-pass groups (their
    # extra forwards), and every rank runs as many micro-steps as the busiest one.
    splits_groups = False

    def padding_micro_batches(self, count: int) -> int:
        import torch.distributed as dist

        if not dist.is_initialized():
            return 0
        most = torch.tensor([count], device=self.module.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item()) - count

    @contextlib.contextmanager
    def micro_step(self, last: bool):
        # DeepSpeed's documented manual accumulation: reduce and allow a step on the last.
        self.module.set_gradient_accumulation_boundary(last)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        self.module.backward(loss)

    def step(self) -> None:
        self.module.step()

    def gathered(self):
        """Under ZeRO-3 parameters are partitioned (empty locally): gather them on every rank."""
        if self.stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(
            list(self.qpeft.adapter.parameters()), modifier_rank=None
        )

    def save_state(self, directory: Path, rank: int) -> None:
        # Collective: every rank writes its optimizer shard into the same checkpoint.
        self.module.save_checkpoint(str(directory / "deepspeed"), tag="state")

    def load_state(self, directory: Path) -> None:
        self.module.load_checkpoint(str(directory / "deepspeed"), tag="state")
