"""How many threads torch computes with: chosen once, while a model loads (Engine.load).

torch's default is one OpenMP thread per core, and each thread spins while it waits for the
next operator. Alone on a machine that is the fastest way to run. Next to another busy
process it is the slowest: a decode step is hundreds of operators, and each one waits at a
barrier for the thread whose core the other process holds. bench/busy.py measures these
cases (figures: docs/decisions.md, "Compute threads").

So `threads=None` (the default, `--threads` unset) takes the cores that other processes
leave free while the model loads: the CPU time they used over that span (from /proc/stat,
less this process's own time) in cores, a core counting as busy from half use, taken from
the cores this process may run on; at least 1, at most torch's own default (a thread per
core, or OMP_NUM_THREADS). The costs are lopsided: a thread too few loses its
share of the work, a thread too many next to a busy core loses most of it.

The choice is made once: load that starts or ends later is not followed. torch's thread
count is per process, so the last Engine.load sets it for every engine in the process.
Without /proc/stat (macOS, Windows) the default is torch's own.

OpenMP's wait policy (OMP_WAIT_POLICY=PASSIVE: waiting threads sleep instead of spinning)
cannot be set from here: torch's OpenMP (libgomp) reads it once, when torch is imported.
"""
import math
import os
import resource
import time
from pathlib import Path

import torch

from tinfinite import settings

# The shortest span the machine's load is read over: /proc/stat counts in 10 ms ticks.
LOOK_SECONDS = 0.05
# A core counts as busy from this share of use (rounding half up).
BUSY_FROM = 0.5
# torch's own default, read before tinfinite changes it: a thread per core, or OMP_NUM_THREADS.
TORCH_DEFAULT = torch.get_num_threads()


def choose_threads(cores: int, busy: float | None, most: int) -> int:
    """The auto choice: cores minus the busy ones (busy: the cores other processes used,
    None = unknown), at least 1, at most `most`."""
    free = cores if busy is None else cores - math.floor(busy + 1 - BUSY_FROM)
    return max(1, min(free, most))


def our_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_ticks(proc_stat: str, cpus: list[int]) -> int | None:
    """Busy ticks of these CPUs since boot, from the text of /proc/stat (None: not all there).

    A line: cpuN user nice system idle iowait irq softirq steal ...; all but idle and iowait
    is busy (steal too: the CPU was not ours to use)."""
    want, busy = {f"cpu{c}" for c in cpus}, 0
    for line in proc_stat.splitlines():
        name, *fields = line.split() or [""]
        if name in want:
            ticks = [int(x) for x in fields[:8]]
            busy += sum(ticks) - ticks[3] - ticks[4]
            want.discard(name)
    return None if want else busy


def own_cpu_seconds() -> float:
    """CPU time of this process so far, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def others_busy(ticks: int, own_seconds: float, wall_seconds: float, hz: int) -> float:
    """Cores other processes kept busy over wall_seconds: the busy ticks of our CPUs in that
    span, less our own CPU time, over the span."""
    return max(ticks / hz - own_seconds, 0.0) / max(wall_seconds, 1e-9)


class ThreadChoice:
    """Made before a model loads, applied after: watches the machine's load meanwhile.

    threads: an int >= 1, or None for the auto choice (above)."""

    def __init__(self, threads=settings.THREADS):
        self.threads = settings.integer("threads", threads, least=1, none_ok=True)
        self.cpus = our_cpus()
        self.ticks = self._ticks() if self.threads is None and TORCH_DEFAULT > 1 else None
        self.own, self.t0 = own_cpu_seconds(), time.monotonic()

    def _ticks(self):
        try:
            return busy_ticks(Path("/proc/stat").read_text(), self.cpus)
        except OSError:
            return None

    def busy(self) -> float | None:
        """Cores that other processes used since __init__ (None: not known here)."""
        if self.ticks is None:
            return None
        time.sleep(max(0.0, LOOK_SECONDS - (time.monotonic() - self.t0)))
        now = self._ticks()
        if now is None:
            return None
        return others_busy(now - self.ticks, own_cpu_seconds() - self.own,
                           time.monotonic() - self.t0, os.sysconf("SC_CLK_TCK"))

    def apply(self) -> int:
        """torch.set_num_threads(the choice); returns it."""
        n = self.threads or choose_threads(len(self.cpus), self.busy(), TORCH_DEFAULT)
        torch.set_num_threads(n)
        return n
