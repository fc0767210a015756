#include "reuse_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>

#include "path_mode.h"

namespace genkern::cpu {
namespace {

constexpr size_t kMinBytes = size_t(64) << 10;          // smaller ones glibc keeps mapped
constexpr size_t kReuseCacheBytes = size_t(1) << 30;    // free blocks kept at most
constexpr size_t kPage = 4096;

std::atomic<int64_t> g_mode{1};
thread_local int t_depth = 0;

struct Block {
  size_t size;       // bytes reserved
  size_t requested;  // bytes asked for (reported to the profiler)
};

// The cache: blocks handed out (by address) and free blocks (by size). One lock: a block is
// taken or given back a few hundred times a training step.
struct Cache {
  std::mutex mutex;
  std::unordered_map<void*, Block> live;
  std::multimap<size_t, void*> free;
  size_t cached = 0, live_bytes = 0, live_requested = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may outlive static destructors
  return *c;
}

c10::Allocator* g_previous = nullptr;

void report(void* ptr, int64_t bytes, const Cache& c) {
  if (c10::memoryProfilingEnabled())
    c10::reportMemoryUsageToProfiler(ptr, bytes, c.live_requested, c.live_bytes + c.cached,
                                     c10::Device(c10::DeviceType::CPU));
}

void* fresh_block(size_t size) {
  void* p = nullptr;
  if (posix_memalign(&p, c10::gAlignment, size) != 0) p = nullptr;
  return p;
}

// The deleter of cached blocks: back to the free list, or to the system past the cache's bound.
void reuse_free(void* ptr) {
  Cache& c = cache();
  std::unique_lock<std::mutex> lock(c.mutex);
  auto it = c.live.find(ptr);
  if (it == c.live.end()) {  // the previous allocator's block (raw_deallocate)
    lock.unlock();
    g_previous->raw_deallocate(ptr);
    return;
  }
  const Block b = it->second;
  c.live.erase(it);
  c.live_bytes -= b.size;
  c.live_requested -= b.requested;
  report(ptr, -static_cast<int64_t>(b.requested), c);
  if (g_mode.load(std::memory_order_relaxed) != 0 && c.cached + b.size <= kReuseCacheBytes) {
    c.free.emplace(b.size, ptr);
    c.cached += b.size;
    return;
  }
  lock.unlock();
  std::free(ptr);
}

struct ReuseAllocator final : public c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (t_depth == 0 || n < kMinBytes || g_mode.load(std::memory_order_relaxed) == 0)
      return g_previous->allocate(n);
    Cache& c = cache();
    void* p = nullptr;
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(c.mutex);
      auto it = c.free.lower_bound(n);
      if (it != c.free.end() && it->first <= n + n / 4) {  // a close fit: little memory idle
        size = it->first;
        p = it->second;
        c.free.erase(it);
        c.cached -= size;
      }
    }
    if (p == nullptr) {
      size = (n + kPage - 1) / kPage * kPage;
      p = fresh_block(size);
      if (p == nullptr) {
        empty_reuse_cache();
        p = fresh_block(size);
      }
      TORCH_CHECK(p != nullptr, "genkern: CPU out of memory: tried to allocate ", n, " bytes");
    }
    std::lock_guard<std::mutex> lock(c.mutex);
    c.live.emplace(p, Block{size, n});
    c.live_bytes += size;
    c.live_requested += n;
    report(p, static_cast<int64_t>(n), c);
    return {p, p, &reuse_free, c10::Device(c10::DeviceType::CPU)};
  }

  // Frees what either path handed out (raw_allocate returns the previous allocator's pointers
  // outside a scope, cached blocks inside one).
  c10::DeleterFnPtr raw_deleter() const override {
    return g_previous->raw_deleter() != nullptr ? &reuse_free : nullptr;
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

void install_reuse_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    static auto* allocator = new ReuseAllocator();  // never destroyed: c10 keeps using it
    g_previous = c10::GetCPUAllocator();
    c10::SetCPUAllocator(allocator, /*priority=*/1);
  });
}

void set_reuse_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "buffer reuse");
  if (mode == 0) empty_reuse_cache();
}

int64_t reuse_mode() { return g_mode.load(); }

int64_t empty_reuse_cache() {
  Cache& c = cache();
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    blocks.swap(c.free);
    c.cached = 0;
  }
  int64_t released = 0;
  for (const auto& [size, ptr] : blocks) {
    released += static_cast<int64_t>(size);
    std::free(ptr);
  }
  return released;
}

int64_t reuse_cached_bytes() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return static_cast<int64_t>(cache().cached);
}

int64_t reuse_live_bytes() {
  std::lock_guard<std::mutex> lock(cache().mutex);
  return static_cast<int64_t>(cache().live_bytes);
}

ReuseScope::ReuseScope() { ++t_depth; }
ReuseScope::~ReuseScope() { --t_depth; }

}  // namespace genkern::cpu
