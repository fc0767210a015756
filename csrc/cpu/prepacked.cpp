#include "prepacked.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "conv_geometry.h"
#include "fingerprint.h"
#include "genkern/activation.h"

namespace genkern::cpu {
namespace {

using Clock = std::chrono::steady_clock;
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

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

// oneDNN's post-op name and scalars for an activation.
const char* post_op(Activation act) {
  switch (act) {
    case Activation::kRelu: return "relu";
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

  at::Tensor run(const at::Tensor& packed) const {
    const auto act = static_cast<Activation>(activation);
    c10::List<std::optional<at::Scalar>> scalars;
    if (act == Activation::kLeakyRelu) scalars.push_back(at::Scalar(negative_slope));
    const c10::IValue b = bias ? c10::IValue(bias->contiguous()) : c10::IValue();
    const at::Tensor xd = dense(x);
    const std::string attr = post_op(act), algorithm;
    at::Tensor y =
        transposed
            ? call(*ops().conv_t, {xd, packed, b, padding, output_padding, stride, dilation,
                                   groups, attr, scalars, algorithm})
            : call(*ops().conv,
                   {xd, packed, b, padding, stride, dilation, groups, attr, scalars, algorithm});
    return y.contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                      : at::MemoryFormat::Contiguous);
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

enum class Path : int8_t { kRegular = 0, kPacked = 1, kGemm = 2, kDirect = 3 };

// A packed weight (paths kPacked and kDirect) of the weight at `data` for this geometry, and the
// values it was packed from: their fingerprint (a write through .data leaves the version counter
// as it was), or for a frozen weight (prepack_freeze) the version counter alone.
struct Entry {
  WeakImpl weight;
  std::vector<int64_t> geometry;
  const void* data = nullptr;
  int64_t version = 0;
  std::optional<uint64_t> values;  // none: packed while frozen
  Path path = Path::kRegular;
  at::Tensor packed;
};

std::mutex g_mutex;
// The path auto mode timed fastest, per geometry (a weight's update does not time again)
std::map<std::vector<int64_t>, Path> g_choice;
constexpr size_t kMaxChoices = 4096;  // a run of ever-new shapes: start over past this
// The packed weights, per weight TensorImpl (held weakly)
std::unordered_map<const c10::TensorImpl*, Entry> g_cache;
// The frozen weights (held weakly): their packed copies are trusted while the version counter
// stands
std::unordered_map<const c10::TensorImpl*, WeakImpl> g_frozen;
size_t g_timings = 0;  // geometries timed since the mode was set (for tests)

// The live entry of this weight, or nullptr; drops entries of weights that are gone.
Entry* lookup(const at::Tensor& weight) {
  auto it = g_cache.find(weight.unsafeGetTensorImpl());
  if (it == g_cache.end()) return nullptr;
  if (it->second.weight.lock().get() != weight.unsafeGetTensorImpl()) {
    g_cache.erase(it);  // a new tensor at a dead one's address
    return nullptr;
  }
  return &it->second;
}

bool frozen(const at::Tensor& weight) {
  auto it = g_frozen.find(weight.unsafeGetTensorImpl());
  return it != g_frozen.end() && it->second.lock().get() == weight.unsafeGetTensorImpl();
}

void store(const at::Tensor& weight, std::vector<int64_t> geometry,
           std::optional<uint64_t> values, Path path, at::Tensor packed) {
  for (auto it = g_cache.begin(); it != g_cache.end();) {
    it = it->second.weight.expired() ? g_cache.erase(it) : std::next(it);
  }
  g_cache.insert_or_assign(
      weight.unsafeGetTensorImpl(),
      Entry{WeakImpl(weight.getIntrusivePtr()), std::move(geometry), weight.const_data_ptr(),
            weight._version(), values, path, std::move(packed)});
}

// Records that this weight's calls of this geometry run the unpacked path `path` (what
// prepack_state reports), unless its entry says so already.
void note(const at::Tensor& weight, const std::vector<int64_t>& geometry, Path path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Entry* e = lookup(weight);
  if (e == nullptr || e->path != path || e->geometry != geometry)
    store(weight, geometry, std::nullopt, path, at::Tensor());
}

void choose(const std::vector<int64_t>& geometry, Path path) {
  if (g_choice.size() >= kMaxChoices) g_choice.clear();
  g_choice[geometry] = path;
}

double seconds(const std::function<at::Tensor()>& fn, at::Tensor& out) {
  const auto t0 = Clock::now();
  out = fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

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
  std::lock_guard<std::mutex> lock(g_mutex);
  g_cache.clear();
  g_choice.clear();
  g_timings = 0;
}

bool prepack_available() { return ops().available(); }

void prepack_freeze(const at::Tensor& weight, bool freeze) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (auto it = g_frozen.begin(); it != g_frozen.end();) {
    it = it->second.expired() ? g_frozen.erase(it) : std::next(it);
  }
  if (freeze)
    g_frozen.insert_or_assign(weight.unsafeGetTensorImpl(), WeakImpl(weight.getIntrusivePtr()));
  else
    g_frozen.erase(weight.unsafeGetTensorImpl());
}

int64_t prepack_timings() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_timings);
}

int64_t prepack_state(const at::Tensor& weight) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Entry* e = lookup(weight);
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
                          const PackedCandidate& direct) {
  // no packed call where an output position gets no tap: oneDNN crashes there (conv_geometry.h)
  if (!eligible(x) ||
      has_empty_output(transposed, x, weight, stride, padding, output_padding, dilation))
    return regular();
  const Call c{transposed, x,      weight,     bias,           stride,        padding,
               output_padding, dilation, groups, activation, negative_slope, channels_last};
  const bool always = static_cast<PrepackMode>(g_mode.load()) == PrepackMode::kAlways;
  std::vector<int64_t> geometry = c.geometry();
  std::optional<Path> chosen;  // always mode: packed, unless oneDNN could not pack the geometry
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_choice.find(geometry);
    if (it != g_choice.end()) chosen = it->second;
  }
  if (always && !chosen) chosen = Path::kPacked;
  // a kept candidate this call does not offer (its mode switched to never since): time again
  if (chosen && ((*chosen == Path::kGemm && !gemm) || (*chosen == Path::kDirect && !direct)))
    chosen.reset();
  if (chosen == Path::kRegular || chosen == Path::kGemm) {
    note(weight, geometry, *chosen);
    return *chosen == Path::kGemm ? gemm() : regular();
  }
  if (chosen) {  // kPacked or kDirect: the weight's packed copy, if its values are the ones packed
    bool trusted;
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      trusted = frozen(weight);
    }
    const std::optional<uint64_t> values =
        trusted ? std::nullopt : std::optional<uint64_t>(fingerprint(weight));
    at::Tensor packed;
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      const Entry* e = lookup(weight);
      if (e != nullptr && e->path == *chosen && e->geometry == geometry &&
          e->data == weight.const_data_ptr() &&
          (trusted ? e->version == weight._version() : e->values == values))
        packed = e->packed;
    }
    const bool direct_path = *chosen == Path::kDirect;
    if (!packed.defined()) {
      try {  // oneDNN has no packed primitive for some geometries: the regular path then
        packed = direct_path ? direct.pack() : c.pack();
      } catch (const std::exception&) {
        {
          std::lock_guard<std::mutex> lock(g_mutex);
          choose(geometry, Path::kRegular);
        }
        note(weight, geometry, Path::kRegular);
        return regular();
      }
      std::lock_guard<std::mutex> lock(g_mutex);
      store(weight, std::move(geometry), values, *chosen, packed);
    }
    return direct_path ? direct.run(packed) : c.run(packed);
  }
  // auto mode, the geometry's first call: time the candidates
  at::Tensor packed, y_first;
  try {
    packed = c.pack();
    y_first = c.run(packed);  // creates the oneDNN primitive: not timed
  } catch (const std::exception&) {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      choose(geometry, Path::kRegular);
    }
    note(weight, geometry, Path::kRegular);
    return regular();
  }
  // each candidate's best of two calls (one call's time swings by 10-20% here), each after an
  // untimed call, as the packed one had above: the regular path's makes its oneDNN primitive
  // and its layout choice (onednn_layout.h, itself timed), the GEMM path's sizes its buffers
  at::Tensor y[4], unused;
  regular();
  if (gemm) gemm();
  const at::Tensor direct_packed = direct ? direct.pack() : at::Tensor();
  const auto run_direct = [&] { return direct.run(direct_packed); };
  double best[4] = {1e300, 1e300, 1e300, 1e300};
  for (int round = 0; round < 2; ++round) {
    best[0] = std::min(best[0], seconds(regular, round ? unused : y[0]));
    best[1] = std::min(best[1], seconds([&] { return c.run(packed); }, round ? unused : y[1]));
    if (gemm) best[2] = std::min(best[2], seconds(gemm, round ? unused : y[2]));
    if (direct) best[3] = std::min(best[3], seconds(run_direct, round ? unused : y[3]));
  }
  const int kept = static_cast<int>(std::min_element(best, best + 4) - best);
  const auto kept_path = static_cast<Path>(kept);
  std::lock_guard<std::mutex> lock(g_mutex);
  const std::optional<uint64_t> values =
      (kept_path == Path::kPacked || kept_path == Path::kDirect) && !frozen(weight)
          ? std::optional<uint64_t>(fingerprint(weight))
          : std::nullopt;
  ++g_timings;
  choose(geometry, kept_path);
  store(weight, std::move(geometry), values, kept_path,
        kept_path == Path::kDirect   ? direct_packed
        : kept_path == Path::kPacked ? packed
                                     : at::Tensor());
  return y[kept];
}

}  // namespace genkern::cpu
