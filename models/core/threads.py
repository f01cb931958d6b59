"""Which thread runs what, with how many intra-op threads.

A replica runs three busy threads: the engine's step loop, the Mimi decode worker and the
event loop (HTTP, encoding). PyTorch's CPU kernels run on an OpenMP team per calling thread,
and idle team members spin for a while before they sleep: two teams of two on two cores (the
engine's and the decoder's, both the process-wide default) leave the event loop and the other
team no core, and the served path ran 3x slower than the engine alone on a 2-core CPU
(OMP_NUM_THREADS=1 hid it). So each thread sets its own team size, once, on itself:

- accelerators (cuda, npu): the engine and decode threads only launch kernels, 1 thread each.
- cpu: the decode thread 1; the engine the budget less one core for the decoder and the event
  loop, at least 1. The budget is the process's torch thread count at start: OMP_NUM_THREADS
  when set (Ray sets it to an actor's num_cpus), else the cores it may use.

OpenMP's team size is per thread (omp_set_num_threads sets the calling thread's value), but
PyTorch initialises a thread's value lazily from its last process-wide setting on the thread's
first parallel op, so `apply` first triggers that initialisation and then sets its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThreadPlan:
    engine: int  # intra-op threads of the engine's step loop
    decode: int  # intra-op threads of the Mimi decode worker

    @staticmethod
    def for_device(device_type: str, budget: int | None = None, engine: int | None = None,
                   decode: int | None = None) -> ThreadPlan:
        """The plan for a device; `engine` / `decode` override the computed counts."""
        budget = budget or torch.get_num_threads()
        if device_type == "cpu":
            plan = ThreadPlan(engine=max(1, budget - 1), decode=1)
        else:
            plan = ThreadPlan(engine=1, decode=1)
        return ThreadPlan(engine=engine or plan.engine, decode=decode or plan.decode)


def apply(num_threads: int) -> None:
    """Set the calling thread's intra-op thread count (call it first on that thread)."""
    torch.get_num_threads()  # PyTorch's lazy per-thread init now, so it cannot undo the next line later
    torch.set_num_threads(num_threads)
