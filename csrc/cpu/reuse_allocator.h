// Buffer reuse across training steps for genkern's CPU ops. A large CPU tensor freed by glibc goes
// back to the kernel (munmap, heap trim), and the next step's tensor of that size takes a page
// fault per 4 KB on first touch: 2-14% of a training step on the reference models (2-core Xeon).
// Inside a ReuseScope (genkern's eager fast entries and backward nodes), CPU allocations of
// 64 KB or more, ATen's inside the op included, come from a cache of freed blocks; everything
// else passes through to the CPU allocator installed before (same pointers, same deleters).
// Blocks are reported to the profiler as allocated and freed like any tensor's; the free blocks
// the cache keeps (at most kReuseCacheBytes) are reserved memory, as in CUDA's caching allocator.
#pragma once

#include <cstdint>
#include <utility>

namespace genkern::cpu {

// Installs the reusing allocator as c10's CPU allocator (once; later calls do nothing).
void install_reuse_allocator();

// 0: off (every allocation passes through), 1 or 2: on (GENKERN_CPU_REUSE, default on).
void set_reuse_mode(int64_t mode);
int64_t reuse_mode();

// Frees the blocks the cache keeps; returns how many bytes it released.
int64_t empty_reuse_cache();

// Bytes of free blocks the cache keeps now, and blocks handed out and not yet freed.
int64_t reuse_cached_bytes();
int64_t reuse_live_bytes();

// While one is alive on a thread, that thread's large CPU allocations reuse cached blocks.
class ReuseScope {
 public:
  ReuseScope();
  ~ReuseScope();
  ReuseScope(const ReuseScope&) = delete;
  ReuseScope& operator=(const ReuseScope&) = delete;
};

// f run inside a ReuseScope: how bindings.cpp exposes the custom ops' CPU kernels.
template <typename R, typename... A>
auto in_reuse_scope(R (*f)(A...)) {
  return [f](A... args) -> R {
    const ReuseScope reuse;
    return f(std::forward<A>(args)...);
  };
}

}  // namespace genkern::cpu
