"""How an optimisation step is run: plain/DDP PyTorch, or DeepSpeed ZeRO (CPUs or GPUs).

Both engines wrap only the `QPeftModel`, whose registered parameters are the adapter's: the
frozen LM lives outside it (in `Backbone`), so DDP never broadcasts it and ZeRO shards
only the trainable module, its gradients and optimiser state. The adapter trains in fp32
under either engine; the frozen LM runs in `model.dtype` (bf16 on GPUs by default) and is
replicated on every device.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from qpeft.scoring.model import QPeftModel
from qpeft.training.loop import TrainSettings, load_optimizer, make_optimizer, save_optimizer


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

    @contextlib.contextmanager
    def eval_model(self, build: Callable[[], QPeftModel]) -> Iterator[QPeftModel]:
        """The model to score dev queries with: forwards here need no collective, so ranks
        may score different numbers of queries."""
        yield self.qpeft

    def save_state(self, directory: Path, rank: int) -> None:
        if rank == 0:
            save_optimizer(directory, self.optimizer, self.scheduler)

    def load_state(self, directory: Path) -> None:
        if (directory / "deepspeed").is_dir():
            raise RuntimeError(
                f"{directory}: this checkpoint was written by DeepSpeed (train.engine: "
                "deepspeed); resume it with the engine that wrote it"
            )
        load_optimizer(directory, self.optimizer, self.scheduler)


def import_deepspeed(on_cpu: bool):
    """DeepSpeed, set up to run without compiling anything: on CPUs its accelerator is the
    CPU (gloo), and the shared-memory communication op that `init_distributed` would
    JIT-compile (30-100 s, 1.6 GB) is skipped; the optimiser is always a torch one, so
    FusedAdam and cpu_adam are never built."""
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(
            "train.engine: deepspeed needs DeepSpeed, the `gpu` extra: pip install 'qpeft-ray[gpu]'"
        ) from e
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # `import deepspeed.comm.torch as m` would bind torch itself (deepspeed.comm imports
    # torch under that name): reach the module through sys.modules.
    importlib.import_module("deepspeed.comm.torch")
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    return deepspeed


class DeepSpeedEngine:
    """DeepSpeed ZeRO (stage 2 by default, 3 to partition the adapter's parameters too), on
    GPUs (NCCL) or CPUs (gloo), in the process group Ray Train has already set up."""

    def __init__(
        self, qpeft: QPeftModel, settings: TrainSettings, total_steps: int, world_size: int
    ):
        deepspeed = import_deepspeed(on_cpu=qpeft.backbone.device.type == "cpu")
        self.qpeft = qpeft
        self.stage = settings.zero_stage
        optimizer, scheduler = make_optimizer(qpeft.adapter, settings, total_steps)
        config = {
            "train_micro_batch_size_per_gpu": settings.queries_per_batch,
            "gradient_accumulation_steps": 1,
            "train_batch_size": settings.queries_per_batch * world_size,
            "gradient_clipping": settings.grad_clip,
            # The adapter's weights, gradients and optimiser state stay fp32, as under DDP:
            # it is small, and bf16 rounds its small updates away (docs/training.md).
            "bf16": {"enabled": False},
            "zero_optimization": {"stage": self.stage},
            # Any torch optimiser works with ZeRO; DeepSpeed only vouches for its own, and
            # those JIT-compile (FusedAdam ~6 min on CPU).
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=qpeft,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=config,
            dist_init_required=False,
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

    @contextlib.contextmanager
    def eval_model(self, build: Callable[[], QPeftModel]) -> Iterator[QPeftModel]:
        """Under ZeRO-3 every forward of the trained module all-gathers its parameters, so
        ranks scoring different numbers of dev queries would wait on each other for ever.
        Dev queries are scored with an unpartitioned copy instead (`build` makes a fresh
        model on the same frozen LM), loaded with the gathered weights: no collective."""
        if self.stage < 3:
            yield self.qpeft
            return
        with self.gathered():
            weights = {k: v.detach().clone() for k, v in self.qpeft.adapter.state_dict().items()}
        copy = build()
        copy.adapter.load_state_dict(weights)
        yield copy

    def save_state(self, directory: Path, rank: int) -> None:
        # Collective: every rank writes its optimizer shard into the same checkpoint.
        self.module.save_checkpoint(str(directory / "deepspeed"), tag="state")

    def load_state(self, directory: Path) -> None:
        if not (directory / "deepspeed").is_dir():
            raise RuntimeError(
                f"{directory}: this checkpoint was not written by DeepSpeed (train.engine: ddp); "
                "resume it with the engine that wrote it"
            )
        self.module.load_checkpoint(str(directory / "deepspeed"), tag="state")
