"""Preemption: a stop request (SIGTERM, SIGINT) ends a run after its current step, checkpointed.

Schedulers preempt a job by sending SIGTERM (torchrun passes it on to every rank and waits 30 s
before SIGKILL); Ctrl-C sends SIGINT. While the epochs run, :class:`StopRequest` turns either
into a flag; :class:`StepControl` checks it after every step, agrees on it with the other ranks in
the step's one small collective, and, when any rank was asked to stop, every rank finishes the
same step, one step checkpoint is written and the run raises :class:`Preempted`. The same
collective agrees on the periodic step checkpoints (``train.checkpoint_every_steps``), which
bound what a SIGKILL loses.

A step checkpoint holds the loader's position: per rank and per DataLoader worker, the ids of the
samples the loop received in the epoch (what ``make resume`` must not read again); see
:meth:`pipelines.access.loaders.EpochLoader.skip_consumed`. The anchors: torchdata's
``StatefulDataLoader`` and ``torchdata.nodes`` ``state_dict`` (a position per worker), MosaicML
Streaming's deterministic resumption (the epoch's order is a function of the seed, so the
position is enough).
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from pipelines.access.loaders import STOP_STATE
from pipelines.samples import Batch
from training import distributed
from training.config import Config
from training.distributed import Ranks
from training.engine import Preempted
from training.epoch_outputs import trace_rows
from training.meter import EpochMeter
from training.outputs import save_torch
from training.trainer import History, Training, checkpoint_state

log = logging.getLogger(__name__)

#: Wall time between periodic step checkpoints when ``train.checkpoint_every_steps`` is unset
#: (seconds): a SIGKILL then costs at most about this much training.
CHECKPOINT_INTERVAL_S = 300.0

#: Steps timed before the periodic interval is estimated from them.
ESTIMATE_AFTER_STEPS = 5


class StopRequest:
    """While entered, SIGTERM and SIGINT set :attr:`signum` instead of ending the process.

    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` (a user who insists). The
    previous handlers come back on exit. Outside the main thread (where Python cannot install
    handlers) it does nothing. DataLoader workers signalled with the process (a process group's
    SIGTERM) wait for its decision through
    :data:`pipelines.access.loaders.STOP_STATE`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        STOP_STATE.value = 2  # the DataLoader workers signalled with us stay until we end them
        if self.signum is None:
            log.warning("%s received: stopping after this step with a step checkpoint",
                        signal.Signals(signum).name)  # fmt: skip
        self.signum = signum

    def __enter__(self) -> StopRequest:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self._previous.clear()
            return self
        STOP_STATE.value = 1
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous:
            STOP_STATE.value = 0
        self._previous.clear()


class CheckpointClock:
    """When the next periodic step checkpoint is due.

    Args:
        every_steps: steps between step checkpoints; 0: none (epoch ends and stops only); None:
            about every :data:`CHECKPOINT_INTERVAL_S` seconds, as a number of steps estimated from
            the wall time of the first :data:`ESTIMATE_AFTER_STEPS` steps this process ran.
    """

    def __init__(self, every_steps: int | None):
        self.every_steps = every_steps
        self.since = 0  # steps since the last checkpoint
        self._timed: list[float] = []

    def tick(self) -> bool:
        """Count a step (call once per step, before it computes); whether a checkpoint is due."""
        if self.every_steps is None:
            self._timed.append(time.perf_counter())
            if len(self._timed) > ESTIMATE_AFTER_STEPS:
                per_step = (self._timed[-1] - self._timed[0]) / (len(self._timed) - 1)
                self.every_steps = max(1, round(CHECKPOINT_INTERVAL_S / max(per_step, 1e-6)))
                log.info("step checkpoints every %d steps (about %.0f s)",
                         self.every_steps, CHECKPOINT_INTERVAL_S)  # fmt: skip
        self.since += 1
        return bool(self.every_steps) and self.since >= self.every_steps

    def reset(self) -> None:
        """A checkpoint was written."""
        self.since = 0


class StepControl:
    """Per step: the ranks' agreement (images, stop, checkpoint due), the samples consumed.

    Pass :meth:`agree` and :meth:`after_step` to :func:`training.engine.measure_steps`.

    Args:
        stop: the run's :class:`StopRequest`.
        clock: the run's :class:`CheckpointClock`.
        save: ``save(meter, consumed)`` writes a step checkpoint (a collective: every rank calls
            it at the same step).
        epoch: the epoch running.
        consumed: ``{worker: [ids]}`` consumed before (a resumed epoch), extended here.
    """

    def __init__(
        self,
        stop: StopRequest,
        clock: CheckpointClock,
        save: Callable[[EpochMeter, dict[int, list[str]]], None],
        epoch: int,
        consumed: dict[int, list[str]] | None = None,
    ):
        self.stop, self.clock, self.save, self.epoch = stop, clock, save, epoch
        self.consumed: dict[int, list[str]] = defaultdict(list, consumed or {})
        self._stop = self._due = False

    def agree(self, has_images: bool) -> bool:
        """Whether every rank's batch has images; also agrees on stopping and checkpointing.

        One ``all_reduce`` (MAX) of three flags with several ranks: the same decisions everywhere.
        """
        flags = [int(not has_images), int(self.stop.signum is not None), int(self.clock.tick())]
        if dist.is_initialized():
            value = torch.tensor(flags)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            flags = value.tolist()
        self._stop, self._due = bool(flags[1]), bool(flags[2])
        return not flags[0]

    def after_step(self, batch: Batch, meter: EpochMeter) -> None:
        """Count the batch's samples consumed; checkpoint when due or stopping.

        Raises:
            Preempted: a rank was asked to stop (after the step checkpoint is written).
        """
        self.consumed[max(batch.worker, 0)].extend(read[0] for read in batch.reads)
        if self._stop or self._due:
            self.save(meter, dict(self.consumed))
            self.clock.reset()
        if self._stop:
            distributed.barrier()  # rank 0 has written it before any rank leaves
            raise Preempted(self.epoch, len(meter.steps), self.stop.signum or signal.SIGTERM)


class StepCheckpoints:
    """A run's step checkpoints: the stop request, the periodic clock, what each one saves.

    Args:
        cfg: the run's configuration (``train.checkpoint_every_steps``; saved in the checkpoint).
        training: the model and what trains it.
        history: the epochs so far (a step checkpoint holds them, as an epoch's does).
        out: the run's folder (``checkpoint.pt``).
        ranks: this process's rank; rank 0 writes.
        started: the invocation's start (``time.perf_counter``): trace times count from it.

    Attributes:
        stop: the :class:`StopRequest` (enter it around the epochs).
        clock: the :class:`CheckpointClock`.
    """

    def __init__(
        self, cfg: Config, training: Training, history: History, out: Path, ranks: Ranks,
        started: float,
    ):  # fmt: skip
        self.cfg, self.training, self.history = cfg, training, history
        self.out, self.ranks, self.started = out, ranks, started
        self.stop = StopRequest()
        self.clock = CheckpointClock(cfg.train.checkpoint_every_steps)

    def control(self, epoch: int, reads: list | None, resumed: dict | None = None) -> StepControl:
        """The :class:`StepControl` of ``epoch``; ``reads``: the trace list the loop fills;
        ``resumed``: this rank's part of the position the epoch resumes from, if any."""
        before = resumed or {"consumed": {}, "trace": []}

        def save(meter: EpochMeter, consumed: dict[int, list[str]]) -> None:
            rank = self.ranks.rank
            mine = {
                "consumed": consumed, "meter": meter.state(), "rng": rng_state(),
                "trace": before["trace"] + trace_rows(reads or (), epoch, rank, self.started),
            }  # fmt: skip
            parts = distributed.gather(mine)
            if not self.ranks.main:
                return
            step = len(meter.steps)
            position = {"epoch": epoch, "step": step, "time": time.time(), "ranks": parts}
            save_torch(
                self.out / "checkpoint.pt",
                checkpoint_state(self.training, epoch - 1, self.ranks.world_size,
                                 self.cfg.to_dict(), self.history, position),
            )  # fmt: skip
            log.info("step checkpoint: epoch %d step %d in %s", epoch, step,
                     self.out / "checkpoint.pt")  # fmt: skip

        return StepControl(self.stop, self.clock, save, epoch, before["consumed"])


def rng_state() -> dict:
    """This process's random number generators' states (Python's, torch's CPU and CUDA ones)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the generators back to :func:`rng_state`'s ``state``."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
