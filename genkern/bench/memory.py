"""Peak memory a call allocates beyond what is already live (MB): CUDA from the caching
allocator's peak statistics, CPU from the profiler's allocation events.

On the CPU the call runs twice in one profiled session and the second call is measured: its
allocations and its frees of what the first call allocated are all events of the session. A
single call measured alone is not reliable. The profiler drops the free of a block allocated
before its session (a training step's gradients from the step before, freed by zero_grad), so
that reading counts the step's new gradients without the old ones' release. Worse, it subtracts a
stale size when glibc hands out an address that an earlier session saw allocated and never saw
freed: the same stock VAE step read 20.1, 16.9 or 13.6 MB depending on what ran before it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_MEASURED = "genkern.bench.measured_call"


def peak_memory_mb(fn: Callable, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # its allocations become events: the measured call's frees of them are counted
        with record_function(_MEASURED):
            fn()
    events = prof.profiler.kineto_results.events()
    span = next(e for e in events if e.name() == _MEASURED)
    start, end = span.start_ns(), span.start_ns() + span.duration_ns()
    changes = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    return _peak_above_start(changes, start, end) / 2**20


def _peak_above_start(changes: list[tuple[int, int]], start: int, end: int) -> int:
    """The highest live byte count inside [start, end] above the count at start, from the
    (time, +bytes allocated or -bytes freed) events of the whole session, sorted by time."""
    live, base, peak = 0, None, 0
    for t, nbytes in changes:
        if t > end:
            break
        if base is None and t >= start:
            base = peak = live
        live += nbytes
        if base is not None:
            peak = max(peak, live)
    return 0 if base is None else peak - base
