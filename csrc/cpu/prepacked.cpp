#include "prepacked.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "conv_geometry.h"
#include "epilogue.h"
#include "fingerprint.h"
#include "genkern/activation.h"

namespace genkern::cpu {
namespace {

using Clock = std::chrono::steady_clock;
// A call of more FLOPs (2-5 ms at the 200-450 GFLOP/s of this project's CPUs), and of more FLOPs
// per byte of weight than kFlopsPerWeightByte, keeps the regular path without timing the others
// (conv_inference): the packed path saves one reorder of the weight a call, ~2% of such a call.
constexpr double kLargeCallFlops = 1e9, kFlopsPerWeightByte = 2000.0;
// A timing's rounds (each runs every candidate once): two, then more while the rounds so far
// took under kTimingSeconds, at most kMaxRounds (a batch-1 layer's ~0.1 ms candidates: 10)
constexpr double kTimingSeconds = 0.005;
constexpr int kMaxRounds = 10;

std::atomic<int> g_mode{static_cast<int>(PrepackMode::kAuto)};
std::atomic<bool> g_bfloat16{false};

struct Ops {
  std::optional<c10::OperatorHandle> conv, conv_t, reorder, reorder_t;
  bool available() const { return conv && conv_t && reorder && reorder_t; }
};

const Ops& ops() {
  static const Ops found = [] {
    auto& d = c10::Dispatcher::singleton();
    Ops o;
    o.conv = d.findSchema({"mkldnn::_convolution_pointwise", ""});
    o.conv_t = d.findSchema({"mkldnn::_convolution_transpose_pointwise", ""});
    o.reorder = d.findSchema({"mkldnn::_reorder_convolution_weight", ""});
    o.reorder_t = d.findSchema({"mkldnn::_reorder_convolution_transpose_weight", ""});
    return o;
  }();
  return found;
}

at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

// Whether oneDNN's post-op computes the activation as torch does: its relu, and its leaky_relu
// of slope 0, are max(x, 0), which turns NaN into 0 (found by the fuzz; torch keeps NaN).
bool post_op_exact(Activation act, double negative_slope) {
  return act != Activation::kRelu && !(act == Activation::kLeakyRelu && negative_slope == 0.0);
}

// oneDNN's post-op name for an activation (post_op_exact ones only).
const char* post_op(Activation act) {
  switch (act) {
    case Activation::kLeakyRelu: return "leaky_relu";
    case Activation::kTanh: return "tanh";
    case Activation::kSigmoid: return "sigmoid";
    case Activation::kSilu: return "swish";
    default: return "none";
  }
}

struct Call {
  bool transposed;
  const at::Tensor& x;
  const at::Tensor& weight;
  const std::optional<at::Tensor>& bias;
  const std::vector<int64_t>& stride;
  const std::vector<int64_t>& padding;
  const std::vector<int64_t>& output_padding;
  const std::vector<int64_t>& dilation;
  int64_t groups;
  int64_t activation;
  double negative_slope;
  bool channels_last;

  // oneDNN's ops read their tensors as dense (a strided bias view was read as contiguous): the
  // dense copies where they are not (the bias is tiny; x as ATen's own conv path copies it).
  static at::Tensor dense(const at::Tensor& t) {
    return t.contiguous(t.suggest_memory_format());
  }

  at::Tensor pack() const {
    const std::vector<int64_t> input_size = x.sizes().vec();
    const at::Tensor w = dense(weight);
    if (transposed)
      return call(*ops().reorder_t,
                  {w, padding, output_padding, stride, dilation, groups, input_size});
    return call(*ops().reorder, {w, padding, stride, dilation, groups, input_size});
  }

  // The call on the packed weight, its activation a oneDNN post-op where that is exact, else
  // genkern's pass after it.
  at::Tensor run(const at::Tensor& packed) const {
    const auto act = static_cast<Activation>(activation);
    const bool fused = post_op_exact(act, negative_slope);
    c10::List<std::optional<at::Scalar>> scalars;
    if (fused && act == Activation::kLeakyRelu) scalars.push_back(at::Scalar(negative_slope));
    const c10::IValue b = bias ? c10::IValue(bias->contiguous()) : c10::IValue();
    const at::Tensor xd = dense(x);
    const std::string attr = fused ? post_op(act) : "none", algorithm;
    at::Tensor y =
        transposed
            ? call(*ops().conv_t, {xd, packed, b, padding, output_padding, stride, dilation,
                                   groups, attr, scalars, algorithm})
            : call(*ops().conv,
                   {xd, packed, b, padding, stride, dilation, groups, attr, scalars, algorithm});
    y = y.contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                   : at::MemoryFormat::Contiguous);
    if (!fused) activation_(y, activation, negative_slope);
    return y;
  }

  // The multiply-adds' FLOPs: each weight element meets each output pixel (conv2d) or each
  // input pixel (transposed) of each image once.
  double flops() const {
    double pixels = static_cast<double>(x.size(2)) * static_cast<double>(x.size(3));
    if (!transposed) {
      pixels = 1.0;
      for (int d = 0; d < 2; ++d) {
        const int64_t span = dilation[d] * (weight.size(2 + d) - 1) + 1;
        pixels *= static_cast<double>(
            std::max<int64_t>(0, (x.size(2 + d) + 2 * padding[d] - span) / stride[d] + 1));
      }
    }
    return 2.0 * static_cast<double>(weight.numel()) * static_cast<double>(x.size(0)) * pixels;
  }

  // Everything the path choice, the packed weight and the primitive depend on but the values:
  // the call's shapes, strides, dtypes and geometry (an entry's weight values are checked by
  // their fingerprint).
  std::vector<int64_t> geometry() const {
    std::vector<int64_t> k = {static_cast<int64_t>(weight.scalar_type()), transposed, groups,
                              activation, channels_last};
    int64_t slope_bits = 0;
    std::memcpy(&slope_bits, &negative_slope, sizeof slope_bits);
    k.push_back(slope_bits);
    for (const auto* v : {&stride, &padding, &output_padding, &dilation})
      k.insert(k.end(), v->begin(), v->end());
    for (const at::Tensor* t : {&weight, &x}) {
      k.insert(k.end(), t->sizes().begin(), t->sizes().end());
      k.insert(k.end(), t->strides().begin(), t->strides().end());
    }
    k.push_back(bias ? static_cast<int64_t>(bias->scalar_type()) : -1);
    return k;
  }
};

enum class Path : int8_t { kRegular = 0, kPacked = 1, kGemm = 2, kDirect = 3, kWinograd = 4 };
constexpr int kPaths = 5;

// Which weight an entry or a freeze mark is for, with no weak reference to its TensorImpl
// (torch.utils.swap_tensors refuses a tensor that has one: found by the fuzz): its storage, held
// weakly, and its data pointer. A new tensor at a dead one's TensorImpl address over other memory
// is another weight; over the same memory, it reads the same values (Source checks them).
struct Identity {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const c10::StorageImpl* storage_impl = nullptr;
  const void* data = nullptr;

  static Identity of(const at::Tensor& t) {
    return {t.storage().getWeakStorageImpl(), t.storage().unsafeGetStorageImpl(),
            t.const_data_ptr()};
  }
  bool expired() const { return storage.expired(); }
  bool matches(const c10::StorageImpl* impl, const void* ptr) const {
    return !storage.expired() && storage_impl == impl && data == ptr;
  }
  bool same_as(const Identity& now) const { return matches(now.storage_impl, now.data); }
  bool is(const at::Tensor& t) const {
    return matches(t.storage().unsafeGetStorageImpl(), t.const_data_ptr());
  }
};

// What a packed copy was made from: the weight's memory (its Identity) and its values: their
// fingerprint (a write through .data leaves the version counter as it was), or for a frozen
// weight (prepack_freeze) its version counter (inference tensors have none: the fingerprint then).
struct Source {
  Identity memory;
  std::optional<int64_t> version;
  std::optional<uint64_t> values;

  bool same_as(const Source& now) const {
    return memory.same_as(now.memory) && version == now.version && values == now.values;
  }
};

// Read without g_mutex held: the fingerprint reads the whole weight.
Source source_of(const at::Tensor& weight, bool frozen_weight) {
  const bool by_version = frozen_weight && !weight.is_inference();
  return Source{Identity::of(weight),
                by_version ? std::optional<int64_t>(weight._version()) : std::nullopt,
                by_version ? std::nullopt : std::optional<uint64_t>(fingerprint(weight))};
}

// The path a weight's calls of a geometry took; for the packed paths (kPacked and the candidates
// with a weight of their own), the packed weight and what it was packed from.
struct Entry {
  Identity weight;
  std::vector<int64_t> geometry;
  Path path = Path::kRegular;
  at::Tensor packed;
  std::optional<Source> source;
};

// Under g_mutex nothing may wait for the GIL (a Python thread holding it may be waiting for
// g_mutex): weak references are tested with expired(), never lock(), which can need the GIL to
// revive a tensor's Python object, and entries and weak references leave the maps into a
// `Dropped` declared before the lock, destroyed after its release (the last weak reference to a
// dead tensor frees it, which can take the GIL for its Python object). The only strong
// references taken or dropped under it are packed weights, which have no Python object.
std::mutex g_mutex;
// The path auto mode timed fastest, per geometry (a weight's update does not time again)
std::map<std::vector<int64_t>, Path> g_choice;
constexpr size_t kMaxChoices = 4096;  // a run of ever-new shapes: start over past this
// The entries, per weight TensorImpl address (see Identity)
std::unordered_map<const c10::TensorImpl*, Entry> g_cache;
// The frozen weights, per TensorImpl address
std::unordered_map<const c10::TensorImpl*, Identity> g_frozen;
// How often auto mode's timing chose each path for a weight's geometries, per TensorImpl address.
// Past kMaxTimedGeometries a weight's new geometries take its most chosen path untimed: an
// inference server whose batch and image sizes keep changing timed every new shape's first call
// (~10 calls' worth) and ran 2.3-3x slower than stock (found by a fuzz).
struct Tally {
  Identity weight;
  int64_t timed = 0;
  std::array<int64_t, kPaths> wins{};  // per Path
};
std::unordered_map<const c10::TensorImpl*, Tally> g_tally;
constexpr int64_t kMaxTimedGeometries = 8;
size_t g_timings = 0;  // geometries timed since the mode was set (for tests)

struct Dropped {
  std::vector<Entry> entries;
  std::vector<Identity> weights;
};

// The entry of this (live) weight, or nullptr; drops an entry of a dead tensor at its address.
Entry* lookup(const at::Tensor& weight, Dropped& dropped) {
  auto it = g_cache.find(weight.unsafeGetTensorImpl());
  if (it == g_cache.end()) return nullptr;
  if (!it->second.weight.is(weight)) {  // a new tensor at a dead one's address
    dropped.entries.push_back(std::move(it->second));
    g_cache.erase(it);
    return nullptr;
  }
  return &it->second;
}

bool frozen(const at::Tensor& weight) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_frozen.find(weight.unsafeGetTensorImpl());
  return it != g_frozen.end() && it->second.is(weight);
}

// Moves the entries of dead weights (and of `replaced`, when given) into `dropped`.
void sweep(Dropped& dropped, const c10::TensorImpl* replaced = nullptr) {
  for (auto it = g_cache.begin(); it != g_cache.end();) {
    if (it->second.weight.expired() || it->first == replaced) {
      dropped.entries.push_back(std::move(it->second));
      it = g_cache.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = g_tally.begin(); it != g_tally.end();) {
    if (it->second.weight.expired()) {
      dropped.weights.push_back(std::move(it->second.weight));
      it = g_tally.erase(it);
    } else {
      ++it;
    }
  }
}

// Counts a timed choice of `path` for this weight.
void tally(const at::Tensor& weight, Path path) {
  Dropped dropped;
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_tally.find(weight.unsafeGetTensorImpl());
  if (it != g_tally.end() && !it->second.weight.is(weight)) {  // a dead tensor's, at its address
    dropped.weights.push_back(std::move(it->second.weight));
    g_tally.erase(it);
    it = g_tally.end();
  }
  if (it == g_tally.end())
    it = g_tally.emplace(weight.unsafeGetTensorImpl(), Tally{Identity::of(weight)}).first;
  ++it->second.timed;
  ++it->second.wins[static_cast<int>(path)];
}

// The path this weight's timed geometries chose most often, once it has had kMaxTimedGeometries.
std::optional<Path> settled(const at::Tensor& weight) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_tally.find(weight.unsafeGetTensorImpl());
  if (it == g_tally.end() || !it->second.weight.is(weight) ||
      it->second.timed < kMaxTimedGeometries)
    return std::nullopt;
  const auto& w = it->second.wins;
  return static_cast<Path>(std::max_element(w.begin(), w.end()) - w.begin());
}

void store(const at::Tensor& weight, Entry entry) {
  Dropped dropped;
  std::lock_guard<std::mutex> lock(g_mutex);
  sweep(dropped, weight.unsafeGetTensorImpl());
  g_cache.emplace(weight.unsafeGetTensorImpl(), std::move(entry));
}

// Hits sweep too, every kSweepEvery of them: a model served on after another was deleted stores
// nothing new, and the deleted one's packed weights would stay (found by a fuzz: 75 MB).
constexpr int64_t kSweepEvery = 256;
int64_t g_hits = 0;

// The packed weight of this weight's entry for this path and geometry, if made from `now`.
at::Tensor packed_from(const at::Tensor& weight, const std::vector<int64_t>& geometry,
                       Path path, const Source& now) {
  Dropped dropped;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (++g_hits % kSweepEvery == 0) sweep(dropped);
  const Entry* e = lookup(weight, dropped);
  if (e == nullptr || e->path != path || e->geometry != geometry || !e->source ||
      !e->source->same_as(now))
    return {};
  return e->packed;
}

// Keeps `packed`, made from `before`, unless the weight changed while it was made (another
// thread's write: its bits may mix the old values and the new).
void keep_packed(const at::Tensor& weight, std::vector<int64_t> geometry, Path path,
                 at::Tensor packed, Source before, bool frozen_weight) {
  if (!before.same_as(source_of(weight, frozen_weight))) return;
  store(weight, Entry{Identity::of(weight), std::move(geometry), path,
                      std::move(packed), std::move(before)});
}

// Records that this weight's calls of this geometry run the unpacked path `path` (what
// prepack_state reports), unless its entry says so already.
void note(const at::Tensor& weight, const std::vector<int64_t>& geometry, Path path) {
  {
    Dropped dropped;
    std::lock_guard<std::mutex> lock(g_mutex);
    const Entry* e = lookup(weight, dropped);
    if (e != nullptr && e->path == path && e->geometry == geometry) return;
  }
  store(weight, Entry{Identity::of(weight), geometry, path, at::Tensor(), {}});
}

// Keeps `path` for every later call of the geometry; `timed`: auto mode timed (or sized) it.
void choose(const std::vector<int64_t>& geometry, Path path, bool timed) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (timed) ++g_timings;
  if (g_choice.size() >= kMaxChoices) g_choice.clear();
  g_choice[geometry] = path;
}

// The regular path for the geometry from now on (oneDNN could not pack it, or auto mode chose it
// untimed), and its result.
at::Tensor keep_regular(const at::Tensor& weight, const std::vector<int64_t>& geometry,
                        bool timed, const std::function<at::Tensor()>& regular) {
  choose(geometry, Path::kRegular, timed);
  note(weight, geometry, Path::kRegular);
  return regular();
}

double seconds(const std::function<at::Tensor()>& fn, at::Tensor& out) {
  const auto t0 = Clock::now();
  out = fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// oneDNN's packed convs skip the taps that fall in the padding, so a NaN or inf weight there
// would not reach the pixels it reaches in stock's convs (found by the fuzz): such a weight runs
// unpacked. Checked when a weight is packed, not per call.
bool packable(const at::Tensor& weight) { return weight.isfinite().all().item<bool>(); }

bool eligible(const at::Tensor& x) {
  if (static_cast<PrepackMode>(g_mode.load()) == PrepackMode::kNever || !ops().available())
    return false;
  const auto dtype = x.scalar_type();
  return x.dim() == 4 && (dtype == at::kFloat || (dtype == at::kBFloat16 && g_bfloat16.load()));
}

}  // namespace

void set_prepack_mode(int64_t mode, bool bfloat16) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "genkern: unknown prepack mode ", mode);
  g_mode = static_cast<int>(mode);
  g_bfloat16 = bfloat16;
  decltype(g_cache) dropped;  // destroyed after the lock's release (see g_mutex)
  decltype(g_tally) dropped_tallies;
  std::lock_guard<std::mutex> lock(g_mutex);
  dropped.swap(g_cache);
  dropped_tallies.swap(g_tally);
  g_choice.clear();
  g_timings = 0;
}

bool prepack_available() { return ops().available(); }

void prepack_freeze(const at::Tensor& weight, bool freeze) {
  Identity mark = Identity::of(weight);
  Dropped dropped;
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto it = g_frozen.begin(); it != g_frozen.end();) {
    if (it->second.expired() || it->first == weight.unsafeGetTensorImpl()) {
      dropped.weights.push_back(std::move(it->second));
      it = g_frozen.erase(it);
    } else {
      ++it;
    }
  }
  if (freeze) g_frozen.emplace(weight.unsafeGetTensorImpl(), std::move(mark));
}

bool prepack_frozen(const at::Tensor& weight) { return frozen(weight); }

int64_t prepack_entries() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_cache.size());
}

int64_t prepack_timings() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_timings);
}

int64_t prepack_state(const at::Tensor& weight) {
  Dropped dropped;
  std::lock_guard<std::mutex> lock(g_mutex);
  const Entry* e = lookup(weight, dropped);
  return e == nullptr ? -1 : static_cast<int64_t>(e->path);
}

at::Tensor conv_inference(bool transposed, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias,
                          const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                          const std::vector<int64_t>& output_padding,
                          const std::vector<int64_t>& dilation, int64_t groups,
                          int64_t activation, double negative_slope, bool channels_last,
                          const std::function<at::Tensor()>& regular,
                          const std::function<at::Tensor()>& gemm,
                          const PackedCandidate& direct, const PackedCandidate& winograd) {
  // no packed call where an output position gets no tap: oneDNN crashes there (conv_geometry.h)
  if (!eligible(x) ||
      has_empty_output(transposed, x, weight, stride, padding, output_padding, dilation))
    return regular();
  const Call c{transposed, x,      weight,     bias,           stride,        padding,
               output_padding, dilation, groups, activation, negative_slope, channels_last};
  // the candidates with a packed weight of their own, per Path (null: none of that kind)
  const PackedCandidate* own[kPaths] = {nullptr, nullptr, nullptr, &direct, &winograd};
  const auto offered = [&](Path p) {
    return p == Path::kGemm ? static_cast<bool>(gemm)
                            : own[static_cast<int>(p)] == nullptr || *own[static_cast<int>(p)];
  };
  const bool always = static_cast<PrepackMode>(g_mode.load()) == PrepackMode::kAlways;
  std::vector<int64_t> geometry = c.geometry();
  std::optional<Path> chosen;  // always mode: packed, unless oneDNN could not pack the geometry
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_choice.find(geometry);
    if (it != g_choice.end()) chosen = it->second;
  }
  if (winograd && winograd.always) chosen = Path::kWinograd;
  if (always && !chosen) chosen = Path::kPacked;
  if (!chosen && (chosen = settled(weight))) choose(geometry, *chosen, false);
  // a kept candidate this call does not offer (its mode switched to never since): time again
  if (chosen && !offered(*chosen)) chosen.reset();
  if (chosen == Path::kRegular || chosen == Path::kGemm) {
    note(weight, geometry, *chosen);
    return *chosen == Path::kGemm ? gemm() : regular();
  }
  const bool frozen_weight = frozen(weight);
  if (chosen) {  // a packed path: the weight's packed copy, if made from its current values
    const PackedCandidate* candidate = own[static_cast<int>(*chosen)];
    Source now = source_of(weight, frozen_weight);
    at::Tensor packed = packed_from(weight, geometry, *chosen, now);
    if (!packed.defined()) {
      if (!packable(weight)) return regular();
      try {  // oneDNN has no packed primitive for some geometries: the regular path then
        packed = candidate ? candidate->pack() : c.pack();
      } catch (const std::exception&) {
        return keep_regular(weight, geometry, false, regular);
      }
      keep_packed(weight, std::move(geometry), *chosen, packed, std::move(now), frozen_weight);
    }
    return candidate ? candidate->run(packed) : c.run(packed);
  }
  // auto mode, the geometry's first call: time the candidates. A large call on a small weight
  // keeps the regular path untimed: what the others win there is ~2% at most (packing saves a
  // weight reorder per call, 9% on DCGAN-64's G2, 8 MB of weight for 4.3 GFLOP; the GEMM and
  // direct paths win small batch-1 layers), and timing them all cost the first call ~10 calls
  // more. By its FLOPs, not by a timed call: the regular path's first calls time oneDNN's layouts
  // (onednn_layout.h) and ran 16 ms for a while on a 100 us batch-1 conv.
  const double flops = c.flops();
  const double weight_bytes = static_cast<double>(weight.numel() * weight.element_size());
  if (flops > kLargeCallFlops && flops > kFlopsPerWeightByte * weight_bytes)
    return keep_regular(weight, geometry, true, regular);
  if (!packable(weight)) return regular();  // time the geometry with a finite weight
  Source before = source_of(weight, frozen_weight);
  at::Tensor packed[kPaths], y[kPaths], unused;
  try {
    const int onednn = static_cast<int>(Path::kPacked);
    packed[onednn] = c.pack();
    y[onednn] = c.run(packed[onednn]);  // creates the oneDNN primitive: not timed
  } catch (const std::exception&) {
    return keep_regular(weight, geometry, false, regular);
  }
  // each candidate's best of two or more calls, after an untimed call, as the packed one had
  // above: the regular path's makes its oneDNN primitive and its layout choice (onednn_layout.h,
  // itself timed), the GEMM path's sizes its buffers. Rounds go on while they have taken under
  // kTimingSeconds, up to kMaxRounds: one call's time swings by 10-40% on a busy machine, and
  // best-of-two kept the slower of two batch-1 paths 25% apart in 5 of 12 timings (2-core Zen 3)
  regular();
  if (gemm) gemm();
  for (int p = 0; p < kPaths; ++p)
    if (own[p] && *own[p]) packed[p] = own[p]->pack();
  double best[kPaths];
  std::fill(best, best + kPaths, 1e300);
  const auto start = Clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  for (int round = 0; round < kMaxRounds && (round < 2 || elapsed() < kTimingSeconds); ++round) {
    for (int p = 0; p < kPaths; ++p) {
      const auto path = static_cast<Path>(p);
      if (!offered(path)) continue;
      const auto run_path = [&]() -> at::Tensor {
        if (path == Path::kRegular) return regular();
        if (path == Path::kGemm) return gemm();
        return own[p] ? own[p]->run(packed[p]) : c.run(packed[p]);  // kPacked: oneDNN's
      };
      best[p] = std::min(best[p], seconds(run_path, round ? unused : y[p]));
    }
  }
  const int kept = static_cast<int>(std::min_element(best, best + kPaths) - best);
  const auto kept_path = static_cast<Path>(kept);
  choose(geometry, kept_path, true);
  tally(weight, kept_path);
  if (packed[kept].defined())
    keep_packed(weight, std::move(geometry), kept_path, packed[kept], std::move(before),
                frozen_weight);
  else
    note(weight, geometry, kept_path);
  return y[kept];
}

}  // namespace genkern::cpu
