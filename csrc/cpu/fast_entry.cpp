#include "fast_entry.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/autograd/forward_grad.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "conv_geometry.h"
#include "eager_autograd.h"
#include "genkern/losses.h"
#include "losses.h"
#include "losses_autograd.h"

namespace genkern::cpu {
namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// Plain eager mode: no dispatch mode (FakeTensorMode, make_fx, ...), no torch function mode, no
// functorch transform, no CPU autocast region, no torch.jit.trace (it records the custom ops),
// no forward-mode AD level (the Python path refuses tangents); torch.compile is excluded in
// Python.
bool plain_mode() {
  return c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
         !at::impl::torch_function_mode_enabled() &&
         // functorch includes this key while a transform (grad, vmap, ...) is active
         !c10::impl::tls_is_dispatch_key_included(
             c10::DispatchKey::FuncTorchDynamicLayerFrontMode) &&
         !at::autocast::is_autocast_enabled(at::kCPU) && !torch::jit::tracer::isTracing() &&
         // level 0 is the only one (torch nests no forward-AD levels)
         torch::autograd::ForwardADLevel::try_get_by_idx(0) == nullptr;
}

// The backends named by this thread's open genkern.use_backend() contexts, innermost last.
thread_local std::vector<std::string> t_backend_contexts;

// `backend` asks for the cpu backend: "cpu", or "auto" while the innermost use_backend() context
// and then GENKERN_BACKEND (each where it names one other than "auto") name no other.
bool cpu_backend(py::handle backend) {
  if (!PyUnicode_CheckExact(backend.ptr())) return false;
  const char* name = PyUnicode_AsUTF8(backend.ptr());
  if (name == nullptr) {
    PyErr_Clear();
    return false;
  }
  if (std::strcmp(name, "cpu") == 0) return true;
  if (std::strcmp(name, "auto") != 0) return false;
  if (!t_backend_contexts.empty() && t_backend_contexts.back() != "auto")
    return t_backend_contexts.back() == "cpu";
  const char* env = std::getenv("GENKERN_BACKEND");
  if (env == nullptr) return true;
  std::string value(env);
  const auto first = value.find_first_not_of(" \t\n\r\f\v");
  if (first == std::string::npos) return true;
  value = value.substr(first, value.find_last_not_of(" \t\n\r\f\v") - first + 1);
  return value == "auto" || value == "cpu";
}

bool starts(py::handle backend) { return plain_mode() && cpu_backend(backend); }

bool float_or_double(const Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble;
}

// A plain Tensor or Parameter (no subclass), strided, on the CPU; nullptr for anything else.
const Tensor* cpu_tensor(py::handle h) {
  if (!THPVariable_CheckExact(h.ptr())) return nullptr;
  const Tensor& t = THPVariable_Unpack(h.ptr());
  if (!t.defined() || t.device().type() != at::kCPU || t.layout() != at::kStrided || t.is_neg())
    return nullptr;
  return &t;
}

// A float32/float64 cpu_tensor.
const Tensor* float_tensor(py::handle h) {
  const Tensor* t = cpu_tensor(h);
  return t != nullptr && float_or_double(*t) ? t : nullptr;
}

// None, or a float_tensor of `dtype`.
bool optional_tensor(py::handle h, at::ScalarType dtype, OptTensor& out) {
  if (h.is_none()) return true;
  const Tensor* t = float_tensor(h);
  if (t == nullptr || t->scalar_type() != dtype) return false;
  out = *t;
  return true;
}

bool to_int(py::handle h, int64_t& value) {
  if (!PyLong_CheckExact(h.ptr())) return false;  // bool is not exactly an int
  int overflow = 0;
  value = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
  if (overflow != 0 || (value == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  return true;
}

bool to_double(py::handle h, double& value) {
  if (PyFloat_CheckExact(h.ptr())) {
    value = PyFloat_AS_DOUBLE(h.ptr());
    return true;
  }
  int64_t i = 0;
  if (!to_int(h, i)) return false;
  value = static_cast<double>(i);
  return true;
}

bool to_bool(py::handle h, bool& value) {
  if (!PyBool_Check(h.ptr())) return false;
  value = h.ptr() == Py_True;
  return true;
}

// An int or a tuple/list of 2 ints, each at least `min`.
bool to_pair(py::handle h, int64_t min, std::vector<int64_t>& out) {
  int64_t a = 0, b = 0;
  if (to_int(h, a)) {
    b = a;
  } else if (PyTuple_CheckExact(h.ptr()) && PyTuple_GET_SIZE(h.ptr()) == 2) {
    if (!to_int(PyTuple_GET_ITEM(h.ptr(), 0), a) || !to_int(PyTuple_GET_ITEM(h.ptr(), 1), b))
      return false;
  } else if (PyList_CheckExact(h.ptr()) && PyList_GET_SIZE(h.ptr()) == 2) {
    if (!to_int(PyList_GET_ITEM(h.ptr(), 0), a) || !to_int(PyList_GET_ITEM(h.ptr(), 1), b))
      return false;
  } else {
    return false;
  }
  if (a < min || b < min) return false;
  out = {a, b};
  return true;
}

// One of a fixed set of names: its index.
bool to_choice(py::handle h, const std::vector<const char*>& names, int64_t& index) {
  if (!PyUnicode_CheckExact(h.ptr())) return false;
  const char* s = PyUnicode_AsUTF8(h.ptr());
  if (s == nullptr) {
    PyErr_Clear();
    return false;
  }
  for (size_t i = 0; i < names.size(); ++i) {
    if (std::strcmp(s, names[i]) == 0) {
      index = static_cast<int64_t>(i);
      return true;
    }
  }
  return false;
}

// The activation id (the mirror of genkern/activations.py) and the negative slope.
bool to_activation(py::handle name, py::handle slope, int64_t& act, double& negative_slope) {
  static const std::vector<const char*> names = {"identity", "relu",    "leaky_relu",
                                                 "tanh",     "sigmoid", "silu"};
  if (name.is_none()) {
    act = 0;
  } else if (!to_choice(name, names, act)) {
    return false;
  }
  return to_double(slope, negative_slope);
}

py::object wrap(Tensor t) { return py::reinterpret_steal<py::object>(THPVariable_Wrap(t)); }

const py::object declined() { return py::none(); }

}  // namespace

void push_backend_context(const std::string& name) { t_backend_contexts.push_back(name); }

void pop_backend_context() {
  if (!t_backend_contexts.empty()) t_backend_contexts.pop_back();
}

py::object linear_fast(py::handle x_, py::handle weight_, py::handle bias_, py::handle activation,
                       py::handle negative_slope, py::handle backend) {
  if (!starts(backend)) return declined();
  const Tensor* x = float_tensor(x_);
  const Tensor* w = float_tensor(weight_);
  OptTensor b;
  int64_t act = 0;
  double slope = 0.0;
  if (x == nullptr || w == nullptr || w->scalar_type() != x->scalar_type() ||
      !optional_tensor(bias_, x->scalar_type(), b) ||
      !to_activation(activation, negative_slope, act, slope))
    return declined();
  if (x->dim() < 1 || w->dim() != 2) return declined();
  const int64_t out = w->size(0), in = w->size(1);
  if (x->size(-1) != in || (b && (b->dim() != 1 || b->size(0) != out))) return declined();
  std::vector<int64_t> out_shape(x->sizes().begin(), x->sizes().end());
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < out_shape.size(); ++d) rows *= out_shape[d];
  if (rows == 0 || out == 0) return declined();
  out_shape.back() = out;
  Tensor y;
  {
    py::gil_scoped_release no_gil;
    const Tensor x2 = x->dim() == 2 ? *x : x->reshape({rows, in});
    y = linear_act_eager_cpu(x2, *w, b, act, slope);
    if (x->dim() != 2) y = y.reshape(out_shape);
  }
  return wrap(std::move(y));
}

namespace {

// The checks conv2d and conv_transpose2d share: 4-D float tensors of one dtype with a non-empty
// batch, an optional bias of that dtype, positive stride / dilation / groups, padding >= 0.
struct ConvArgs {
  const Tensor* x = nullptr;
  const Tensor* w = nullptr;
  OptTensor b;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1, act = 0;
  double slope = 0.0;

  bool parse(py::handle x_, py::handle w_, py::handle b_, py::handle stride_,
             py::handle padding_, py::handle dilation_, py::handle groups_,
             py::handle activation, py::handle negative_slope) {
    x = float_tensor(x_);
    w = float_tensor(w_);
    return x != nullptr && w != nullptr && w->scalar_type() == x->scalar_type() &&
           x->dim() == 4 && w->dim() == 4 && x->numel() > 0 && w->numel() > 0 &&
           optional_tensor(b_, x->scalar_type(), b) && to_pair(stride_, 1, stride) &&
           to_pair(padding_, 0, padding) && to_pair(dilation_, 1, dilation) &&
           to_int(groups_, groups) && groups > 0 &&
           to_activation(activation, negative_slope, act, slope);
  }

  bool bias_has(int64_t channels) const {
    return !b || (b->dim() == 1 && b->size(0) == channels);
  }

  // The output's layout: channels_last when the input or the weight is (ATen's rule).
  bool channels_last() const {
    return conv_output_format(*x, *w) == at::MemoryFormat::ChannelsLast;
  }
};

}  // namespace

py::object conv2d_fast(py::handle x_, py::handle weight_, py::handle bias_, py::handle stride_,
                       py::handle padding_, py::handle dilation_, py::handle groups_,
                       py::handle activation, py::handle negative_slope, py::handle backend) {
  ConvArgs a;
  if (!starts(backend) || !a.parse(x_, weight_, bias_, stride_, padding_, dilation_, groups_,
                                   activation, negative_slope))
    return declined();
  const Tensor &x = *a.x, &w = *a.w;
  // (no input channels: the Python path's stock composite)
  if (w.size(0) % a.groups != 0 || x.size(1) != w.size(1) * a.groups ||
      !a.bias_has(w.size(0)) || w.size(1) == 0)
    return declined();
  for (int i = 0; i < 2; ++i) {
    if (x.size(2 + i) + 2 * a.padding[i] < a.dilation[i] * (w.size(2 + i) - 1) + 1)
      return declined();
  }
  const bool cl = a.channels_last();
  Tensor y;
  {
    py::gil_scoped_release no_gil;
    y = conv2d_act_eager_cpu(x, w, a.b, a.stride, a.padding, a.dilation, a.groups, a.act,
                             a.slope, cl);
  }
  return wrap(std::move(y));
}

py::object conv_transpose2d_fast(py::handle x_, py::handle weight_, py::handle bias_,
                                 py::handle stride_, py::handle padding_,
                                 py::handle output_padding_, py::handle groups_,
                                 py::handle dilation_, py::handle activation,
                                 py::handle negative_slope, py::handle backend) {
  ConvArgs a;
  std::vector<int64_t> output_padding;
  if (!starts(backend) ||
      !a.parse(x_, weight_, bias_, stride_, padding_, dilation_, groups_, activation,
               negative_slope) ||
      !to_pair(output_padding_, 0, output_padding))
    return declined();
  const Tensor &x = *a.x, &w = *a.w;
  const int64_t out_channels = w.size(1) * a.groups;
  if (w.size(0) % a.groups != 0 || x.size(1) != w.size(0) || !a.bias_has(out_channels))
    return declined();
  for (int i = 0; i < 2; ++i) {
    if (output_padding[i] >= a.stride[i] && output_padding[i] >= a.dilation[i]) return declined();
    const int64_t size = (x.size(2 + i) - 1) * a.stride[i] - 2 * a.padding[i] +
                         a.dilation[i] * (w.size(2 + i) - 1) + output_padding[i] + 1;
    if (size <= 0) return declined();
  }
  const bool cl = a.channels_last();
  Tensor y;
  {
    py::gil_scoped_release no_gil;
    y = conv_transpose2d_act_eager_cpu(x, w, a.b, a.stride, a.padding, output_padding,
                                       a.dilation, a.groups, a.act, a.slope, cl);
  }
  return wrap(std::move(y));
}

py::object batch_norm_fast(py::handle x_, py::handle running_mean_, py::handle running_var_,
                           py::handle weight_, py::handle bias_, py::handle training_,
                           py::handle momentum_, py::handle eps_, py::handle activation,
                           py::handle negative_slope, py::handle backend) {
  if (!starts(backend)) return declined();
  const Tensor* x = float_tensor(x_);
  OptTensor w, b, running[2];
  bool training = false;
  double momentum = 0.0, eps = 0.0, slope = 0.0;
  int64_t act = 0;
  if (x == nullptr || x->dim() < 2 || x->numel() == 0 ||
      !optional_tensor(weight_, x->scalar_type(), w) ||
      !optional_tensor(bias_, x->scalar_type(), b) || !to_bool(training_, training) ||
      !to_double(momentum_, momentum) || !to_double(eps_, eps) ||
      !to_activation(activation, negative_slope, act, slope))
    return declined();
  if (training ? !(eps > 0.0) : !(eps >= 0.0)) return declined();  // Python raises torch's error
  const int64_t channels = x->size(1);
  if ((w && (w->numel() != channels || w->dim() != 1)) ||
      (b && (b->numel() != channels || b->dim() != 1)))
    return declined();
  const py::handle running_[2] = {running_mean_, running_var_};
  if (running_[0].is_none() != running_[1].is_none()) return declined();  // torch refuses one
  for (int i = 0; i < 2; ++i) {
    if (running_[i].is_none()) {
      if (!training) return declined();  // eval needs both
      continue;
    }
    const Tensor* r = cpu_tensor(running_[i]);
    if (r == nullptr || r->scalar_type() != x->scalar_type() || r->requires_grad() ||
        r->numel() != channels || r->dim() != 1)
      return declined();
    running[i] = *r;
  }
  if (training && x->numel() / channels <= 1) return declined();
  Tensor y;
  {
    py::gil_scoped_release no_gil;
    y = batch_norm_act_eager_cpu(*x, w, b, running[0], running[1], training, momentum, eps, act,
                                 slope);
  }
  return wrap(std::move(y));
}

py::object gan_loss_fast(py::handle real_, py::handle fake_, py::handle kind, bool discriminator,
                         py::handle backend) {
  // The mirror of genkern/ops/losses.py's D_TERMS and G_TERMS.
  static const std::vector<const char*> kinds = {"bce", "hinge", "wgan", "lsgan"};
  using T = LossTerm;
  static const T real_terms[] = {T::kSoftplusNeg, T::kHingeReal, T::kNeg, T::kSqOne};
  static const T fake_terms[] = {T::kSoftplusPos, T::kHingeFake, T::kPos, T::kSqZero};
  static const T generator_terms[] = {T::kSoftplusNeg, T::kNeg, T::kNeg, T::kSqOne};
  int64_t k = 0;
  if (!starts(backend) || !to_choice(kind, kinds, k)) return declined();
  const Tensor* fake = float_tensor(fake_);
  const Tensor* real = discriminator ? float_tensor(real_) : nullptr;
  if (fake == nullptr || (discriminator && (real == nullptr ||
                                            real->scalar_type() != fake->scalar_type())))
    return declined();
  const auto real_term = static_cast<int64_t>(discriminator ? real_terms[k] : T::kSoftplusNeg);
  const auto fake_term = static_cast<int64_t>(discriminator ? fake_terms[k] : generator_terms[k]);
  Tensor loss;
  {
    py::gil_scoped_release no_gil;
    loss = gan_loss_autograd_cpu(real != nullptr ? *real : *fake, *fake, real_term, fake_term,
                                 real != nullptr);
  }
  return wrap(std::move(loss));
}

py::object vae_loss_fast(py::handle recon_, py::handle target_, py::handle mu_,
                         py::handle logvar_, py::handle recon_loss_, py::handle beta_,
                         py::handle reduction_, py::handle logits_, py::handle return_components_,
                         py::handle backend) {
  static const std::vector<const char*> recon_losses = {"bce", "mse"};
  static const std::vector<const char*> reductions = {"sum", "mean"};
  int64_t recon_loss = 0, reduction = 0;
  double beta = 0.0;
  bool logits = true, components = false;
  if (!starts(backend) || !to_choice(recon_loss_, recon_losses, recon_loss) ||
      !to_choice(reduction_, reductions, reduction) || !to_double(beta_, beta) ||
      !to_bool(logits_, logits) || !to_bool(return_components_, components))
    return declined();
  const Tensor* t[4] = {float_tensor(recon_), float_tensor(target_), float_tensor(mu_),
                        float_tensor(logvar_)};
  for (const Tensor* p : t) {
    if (p == nullptr || p->scalar_type() != t[0]->scalar_type()) return declined();
  }
  const Tensor &recon = *t[0], &target = *t[1], &mu = *t[2], &logvar = *t[3];
  if (!target.sizes().equals(recon.sizes()) || !logvar.sizes().equals(mu.sizes()))
    return declined();
  double scale = 1.0;
  if (reduction == 1) {  // "mean": per batch element
    if (recon.dim() == 0) return declined();
    scale = recon.size(0) > 0 ? 1.0 / static_cast<double>(recon.size(0)) : std::nan("");
  }
  const auto rid = static_cast<int64_t>(recon_loss == 1  ? ReconLoss::kMse
                                        : logits ? ReconLoss::kBceLogits
                                                 : ReconLoss::kBce);
  const bool on = at::GradMode::is_enabled();
  const std::array<bool, 4> mask = {on && recon.requires_grad(), on && target.requires_grad(),
                                    on && mu.requires_grad(), on && logvar.requires_grad()};
  Tensor total, rec, kl;
  {
    py::gil_scoped_release no_gil;
    if (mask[0] || mask[1] || mask[2] || mask[3]) {
      auto out = vae_loss_autograd_cpu(recon, target, mu, logvar, rid, beta, scale);
      total = out[0], rec = out[1], kl = out[2];
    } else {
      std::tie(total, rec, kl, std::ignore, std::ignore, std::ignore, std::ignore) =
          vae_loss_cpu(recon, target, mu, logvar, rid, beta, scale, mask);
    }
  }
  if (!components) return wrap(std::move(total));
  return py::make_tuple(wrap(std::move(total)), wrap(std::move(rec)), wrap(std::move(kl)));
}

namespace {

// The checks and output size the 2-D poolings share (genkern/ops/pool.py's _pool_args and
// _output_hw): a non-empty 4-D float input, positive kernel / stride / dilation, padding at most
// half the effective kernel, an output of at least 1x1 (ATen's pooling_output_shape).
struct PoolArgs {
  const Tensor* x = nullptr;
  std::vector<int64_t> kernel, stride, padding, dilation{1, 1}, out_size;
  bool ceil_mode = false;

  bool parse(py::handle x_, py::handle kernel_, py::handle stride_, py::handle padding_,
             py::handle ceil_mode_) {
    x = float_tensor(x_);
    if (x == nullptr || x->dim() != 4 || x->numel() == 0 || !to_pair(kernel_, 1, kernel) ||
        !to_pair(padding_, 0, padding) || !to_bool(ceil_mode_, ceil_mode))
      return false;
    if (stride_.is_none()) {
      stride = kernel;
    } else if (!to_pair(stride_, 1, stride)) {
      return false;
    }
    return true;
  }

  bool sizes() {
    out_size.resize(2);
    for (int i = 0; i < 2; ++i) {
      const int64_t k = kernel[i], s = stride[i], p = padding[i], d = dilation[i];
      if (p > ((k - 1) * d + 1) / 2) return false;
      const int64_t size = x->size(2 + i);
      const int64_t num = size + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
      int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;  // floor division
      if (ceil_mode && (out - 1) * s >= size + p) --out;
      if (out < 1) return false;
      out_size[i] = out;
    }
    return true;
  }
};

}  // namespace

py::object max_pool2d_fast(py::handle x_, py::handle kernel_size, py::handle stride,
                           py::handle padding, py::handle dilation, py::handle ceil_mode,
                           py::handle return_indices, py::handle activation,
                           py::handle negative_slope, py::handle backend) {
  PoolArgs a;
  bool indices = false;
  int64_t act = 0;
  double slope = 0.0;
  if (!starts(backend) || !a.parse(x_, kernel_size, stride, padding, ceil_mode) ||
      !to_pair(dilation, 1, a.dilation) || !to_bool(return_indices, indices) || !a.sizes() ||
      !to_activation(activation, negative_slope, act, slope))
    return declined();
  std::vector<Tensor> out;
  {
    py::gil_scoped_release no_gil;
    out = max_pool2d_eager_cpu(*a.x, a.kernel, a.stride, a.padding, a.dilation, a.out_size, act,
                               slope, indices);
  }
  if (!indices) return wrap(std::move(out[0]));
  return py::make_tuple(wrap(std::move(out[0])), wrap(std::move(out[1])));
}

py::object avg_pool2d_fast(py::handle x_, py::handle kernel_size, py::handle stride,
                           py::handle padding, py::handle ceil_mode, py::handle count_include_pad,
                           py::handle divisor_override, py::handle backend) {
  PoolArgs a;
  bool include_pad = true;
  int64_t divisor = 0;
  if (!starts(backend) || !a.parse(x_, kernel_size, stride, padding, ceil_mode) ||
      !to_bool(count_include_pad, include_pad) || !a.sizes())
    return declined();
  if (!divisor_override.is_none() && (!to_int(divisor_override, divisor) || divisor == 0))
    return declined();
  Tensor y;
  {
    py::gil_scoped_release no_gil;
    y = avg_pool2d_eager_cpu(*a.x, a.kernel, a.stride, a.padding, a.out_size, include_pad,
                             divisor);
  }
  return wrap(std::move(y));
}

py::object reparameterize_fast(py::handle mu_, py::handle logvar_, py::handle eps_,
                               py::handle generator, py::handle backend) {
  if (!starts(backend)) return declined();
  const Tensor* mu = float_tensor(mu_);
  const Tensor* logvar = float_tensor(logvar_);
  OptTensor eps;
  if (mu == nullptr || logvar == nullptr || logvar->scalar_type() != mu->scalar_type() ||
      !logvar->sizes().equals(mu->sizes()) || !optional_tensor(eps_, mu->scalar_type(), eps) ||
      (eps && !eps->sizes().equals(mu->sizes())))
    return declined();
  std::optional<at::Generator> gen;
  if (!generator.is_none()) {
    if (!THPGenerator_Check(generator.ptr())) return declined();
    gen = reinterpret_cast<THPGenerator*>(generator.ptr())->cdata;
    if (gen->device().type() != at::kCPU) return declined();
  }
  Tensor z;
  {
    py::gil_scoped_release no_gil;
    z = reparameterize_eager_cpu(*mu, *logvar, eps, gen);
  }
  return wrap(std::move(z));
}

}  // namespace genkern::cpu
