"""Per-phase cost of a training step: time, FLOPs and memory (``train.profile=true``).

Code marks its phases with ``with timed("compress"): ...``. With no profiler active (the default) that
is one context-variable lookup and a shared null context: nothing is timed, nothing synchronised.
A :class:`Profiler` made active (``with profiler.active():``) records every phase by its nested name
(``compress/kmeans``), synchronising CUDA around each phase so that GPU time lands in the phase that
queued it. On sampled steps it counts FLOPs instead (``torch.utils.flop_counter``: matrix products,
convolutions, attention, and K-means' distances; element-wise ops are not counted), and those steps
are left out of the timings, since counting slows them down.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


@register_flop_formula([aten._euclidean_dist, aten._cdist_forward])
def _distance_flops(x_shape, y_shape, *args, out_shape=None, **kwargs) -> int:
    """Euclidean distances between ``[..., n, d]`` and ``[..., m, d]`` (K-means' ``cdist``), counted directly:
    a subtraction, a square and an addition per coordinate of each pair. torch's counter has no formula
    for them, and without one K-means would count as free."""
    return 3 * math.prod(x_shape[:-1]) * y_shape[-2] * x_shape[-1]


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU kernel of ``scaled_dot_product_attention``: torch counts its CUDA kernels only."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_current: ContextVar["Profiler | _Recorder | None"] = ContextVar("splitvit_profiler", default=None)
_NULL = nullcontext()


def timed(name: str):
    """A phase of the active profiler, or nothing when none is active."""
    p = _current.get()
    return _NULL if p is None else p.phase(name)


class _Recorder:
    """Phase times of work done before a profiler knows it belongs to a training step (a server parsing a
    message), kept by full name to be added to that step (``train.mods.Step.before``)."""

    def __init__(self, name: str):
        self.stack = [name]
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        self.stack.append(name)
        full = "/".join(self.stack)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[full] += time.perf_counter() - t0
            self.stack.pop()


@contextmanager
def recording(name: str):
    """Times the block as phase ``name``, and the phases marked inside it, into the dict it yields: in
    place of any active profiler, whose step this work is not (in process, the server's parsing runs
    inside the client's ``wait``)."""
    recorder = _Recorder(name)
    token = _current.set(recorder)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    try:
        yield recorder.seconds
    finally:
        recorder.seconds[name] += time.perf_counter() - t0
        _current.reset(token)


class Profiler:
    """Phase times (summed over timed steps), FLOPs (of the last sampled step) and peak memory of one side."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.stack: list[str] = []
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps = 0  # timed steps
        self.flops: dict[str, int] = {}
        self.peak_bytes = 0  # CUDA: the most allocated during any phase; CPU: autograd's saved tensors at most
        self._counter: FlopCounterMode | None = None
        self._saved = 0
        self.run_seconds: dict[str, float] = defaultdict(float)  # the whole run's, across reset_times
        self.run_steps = 0

    @contextmanager
    def active(self):
        """Make this profiler the one :func:`timed` phases report to, for the block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    @contextmanager
    def step(self, count_flops: bool = False):
        """One training step: timed, or (``count_flops``) counted in FLOPs, with its activations' memory."""
        self._sync()
        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t) if not self.cuda else _NULL
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._saved = 0
        counter = FlopCounterMode(display=False) if count_flops else None
        with self.active(), hooks, (counter or _NULL):
            self._counter = counter
            try:
                with self.phase("total"):
                    yield
            finally:
                self._counter = None
        if counter is None:
            self.steps += 1
        if self.cuda:
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())
        else:
            self.peak_bytes = max(self.peak_bytes, self._saved)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._saved += t.numel() * t.element_size()  # what autograd keeps for the backward pass
        return t

    @contextmanager
    def phase(self, name: str):
        """Time (or count the FLOPs of) the block as phase ``name``, nested under the open phases."""
        full = "/".join([s for s in self.stack if s != "total"] + [name])  # "compress/kmeans"
        self.stack.append(name)
        self._sync()
        counter = self._counter
        f0 = counter.get_total_flops() if counter is not None else 0
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t0
            self.stack.pop()
            if counter is not None:
                self.flops[full] = self.flops.get(full, 0) + counter.get_total_flops() - f0
            else:
                self.seconds[full] += dt

    def add(self, name: str, seconds: float) -> None:
        """A phase timed by the caller (one that began before the profiler knew it was a training step)."""
        if self._counter is None:
            self.seconds[name] += seconds

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def summary(self, run: bool = False) -> dict:
        """Mean milliseconds per timed step of each phase since the last :meth:`reset_times` (``run``: over
        the whole run), FLOPs per step (``total`` included) of the last sampled step, peak memory."""
        seconds, steps = (self.run_seconds, self.run_steps) if run else (self.seconds, self.steps)
        n = max(steps, 1)
        return {
            "steps": steps,
            "ms": {k: round(1e3 * v / n, 4) for k, v in sorted(seconds.items())},
            "flops": dict(sorted(self.flops.items())),
            "peak_mb": round(self.peak_bytes / 2**20, 3),
            "peak_kind": "cuda_allocated" if self.cuda else "autograd_saved",
        }

    def reset_times(self) -> None:
        """Start a new interval: the times so far go to the run's totals."""
        for k, v in self.seconds.items():
            self.run_seconds[k] += v
        self.run_steps += self.steps
        self.seconds.clear()
        self.steps = 0


def peak_rss_mb() -> float:
    """The process's peak resident memory (all sides in one process count together)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def machine() -> dict:
    """Where a run is made, for its ``summary.json``: the CPU, the vector instructions PyTorch's kernels use
    on it, the threads, the GPU and the versions. Float sums depend on the kernels, so the same seed gives
    the same numbers on the same kind of machine; two CPUs can part in the last bits, and the runs drift
    apart from there (docs/reference/run-files.md)."""
    import os
    import platform

    from . import __version__

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "splitvit": __version__}


def describe_machine() -> str:
    """One line on where a measurement was made: the CPU (and GPU), the cores and threads, the versions, the date.
    Every benchmark output starts with it (``make bench``)."""
    import datetime

    m = machine()
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    return (f"# {datetime.date.today().isoformat()}: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
            f"{gpu}; Python {m['python']}, torch {m['torch']}, splitvit {m['splitvit']}")
