"""Buffer reuse across training steps for the CPU backend's eager ops (csrc/cpu/reuse_allocator.h):
inside genkern's eager CPU ops and their backward, CPU allocations of 64 KB or more (ATen's within
them included) come from a cache of blocks freed earlier, instead of fresh pages the kernel must
fault in on first touch. Allocations anywhere else pass through to torch's CPU allocator. The cache
keeps at most 1 GiB of free blocks; the profiler sees each block allocated and freed like any
tensor's (the free blocks are reserved memory, as in torch.cuda's caching allocator).

GENKERN_CPU_REUSE: "auto" or "always" (default auto: on), or "never". `set_mode` changes it at run
time; `empty_cache` (genkern.empty_cpu_cache) returns the free blocks to the system.
"""

from __future__ import annotations

from genkern import _ext
from genkern.ops import _modes

MODES = _modes.MODES

_SWITCH = _modes.extension_switch("GENKERN_CPU_REUSE", "buffer reuse", "set_reuse_mode")
set_mode = _SWITCH.set  # switch buffer reuse for this process ("never" also empties the cache)
mode = _SWITCH.scoped  # set_mode(name) inside a with-block, the previous mode after it


def empty_cache() -> int:
    """Frees the cached free blocks; returns the bytes released (0 without the extension)."""
    return _ext._C.empty_reuse_cache() if _ext.HAS_CPU else 0


def cached_bytes() -> int:
    """Bytes of free blocks the cache keeps."""
    return _ext._C.reuse_cached_bytes() if _ext.HAS_CPU else 0
