#include "prepacked.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/intrusive_ptr.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "conv_geometry.h"
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

  // Everything the packed weight and the primitive depend on.
  std::vector<int64_t> key() const {
    std::vector<int64_t> k = {reinterpret_cast<int64_t>(weight.data_ptr()), weight._version(),
                              static_cast<int64_t>(weight.scalar_type()),
                              transposed,
                              groups,
                              activation,
                              channels_last};
    int64_t slope_bits = 0;
    std::memcpy(&slope_bits, &negative_slope, sizeof slope_bits);
    k.push_back(slope_bits);
    for (const auto* v : {&stride, &padding, &output_padding, &dilation})
      k.insert(k.end(), v->begin(), v->end());
    k.insert(k.end(), weight.strides().begin(), weight.strides().end());
    k.insert(k.end(), x.sizes().begin(), x.sizes().end());
    k.insert(k.end(), x.strides().begin(), x.strides().end());
    k.push_back(bias ? reinterpret_cast<int64_t>(bias->data_ptr()) : 0);
    k.push_back(bias ? bias->_version() : -1);
    k.push_back(bias ? static_cast<int64_t>(bias->scalar_type()) : -1);
    return k;
  }
};

enum class Path : int8_t { kRegular = 0, kPacked = 1, kGemm = 2, kDirect = 3 };

struct Entry {
  WeakImpl weight;
  std::vector<int64_t> key;
  Path path = Path::kRegular;
  at::Tensor packed;  // paths kPacked and kDirect: their packed weight
};

std::mutex g_mutex;
std::unordered_map<const c10::TensorImpl*, Entry> g_cache;

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

void store(const at::Tensor& weight, std::vector<int64_t> key, Path path, at::Tensor packed) {
  for (auto it = g_cache.begin(); it != g_cache.end();) {
    it = it->second.weight.expired() ? g_cache.erase(it) : std::next(it);
  }
  g_cache.insert_or_assign(weight.unsafeGetTensorImpl(),
                           Entry{WeakImpl(weight.getIntrusivePtr()), std::move(key), path,
                                 path == Path::kPacked || path == Path::kDirect
                                     ? std::move(packed)
                                     : at::Tensor()});
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
}

bool prepack_available() { return ops().available(); }

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
  std::vector<int64_t> key = c.key();
  Path path = Path::kRegular;
  at::Tensor packed;
  bool hit = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    const Entry* e = lookup(weight);
    if (e != nullptr && e->key == key) path = e->path, packed = e->packed, hit = true;
  }
  // a kept candidate this call does not offer (its mode switched to never since): time again
  if (hit && ((path == Path::kGemm && !gemm) || (path == Path::kDirect && !direct))) hit = false;
  if (hit) {
    switch (path) {
      case Path::kPacked: return c.run(packed);
      case Path::kGemm: return gemm();
      case Path::kDirect: return direct.run(packed);
      default: return regular();
    }
  }
  at::Tensor y_first;
  try {  // oneDNN has no packed primitive for some geometries: the regular path then
    packed = c.pack();
    y_first = c.run(packed);  // creates the oneDNN primitive: not timed
  } catch (const std::exception&) {
    std::lock_guard<std::mutex> lock(g_mutex);
    store(weight, std::move(key), Path::kRegular, at::Tensor());
    return regular();
  }
  if (static_cast<PrepackMode>(g_mode.load()) == PrepackMode::kAlways) {
    std::lock_guard<std::mutex> lock(g_mutex);
    store(weight, std::move(key), Path::kPacked, packed);
    return y_first;
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
  store(weight, std::move(key), kept_path, kept_path == Path::kDirect ? direct_packed : packed);
  return y[kept];
}

}  // namespace genkern::cpu
