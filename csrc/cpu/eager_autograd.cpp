#include "eager_autograd.h"

#include <ATen/SavedTensorHooks.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/leaky_relu_backward.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/sigmoid_backward.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/tanh_backward.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/var_mean.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>

#include "batch_norm_act.h"
#include "composite_grads.h"
#include "conv2d_act.h"
#include "conv_geometry.h"
#include "conv_gemm.h"
#include "conv_transpose2d_act.h"
#include "epilogue.h"
#include "genkern/activation.h"
#include "input_edge.h"
#include "linear_act.h"
#include "pool.h"
#include "prepacked.h"
#include "stem_conv.h"
#include "vmap_batched.h"
#include "winograd_3x3.h"
#include "winograd_s2.h"  // winograd_mode

namespace genkern::cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool has(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const std::optional<at::Tensor>& t) { return has(t) && t->requires_grad(); }

// Whether autograd must record the call: grad mode on and some input requires a gradient.
template <typename... Ts>
bool wants_grad(const Ts&... ts) {
  return at::GradMode::is_enabled() && (requires_grad(ts) || ...);
}

// A gradient is being taken: keep the pre-activation when the activation's backward reads it.
bool keeps_preact(int64_t act, double slope) {
  const auto a = static_cast<Activation>(act);
  return a != Activation::kIdentity && !saves_output(a, slope);
}

// The one tensor the activation's backward reads (see genkern/ops/_fused.saved_for_backward).
at::Tensor saved_for_backward(int64_t act, double slope, const at::Tensor& y,
                              const at::Tensor& preact) {
  const auto a = static_cast<Activation>(act);
  if (a == Activation::kIdentity) return at::Tensor();
  return saves_output(a, slope) ? y : preact;
}

// act(z) by stock's differentiable ops (genkern.reference.activation).
at::Tensor stock_activation(const at::Tensor& z, int64_t act, double slope) {
  switch (static_cast<Activation>(act)) {
    case Activation::kRelu:
      return at::relu(z);
    case Activation::kLeakyRelu:
      return at::leaky_relu(z, slope);
    case Activation::kTanh:
      return at::tanh(z);
    case Activation::kSigmoid:
      return at::sigmoid(z);
    case Activation::kSilu:
      return at::silu(z);
    default:
      return z;
  }
}

// grad * act'(z) from the saved tensor (act's output or input) by stock's ops
// (genkern.reference.activation_backward): differentiable but for silu's, from its input.
at::Tensor stock_activation_backward(const at::Tensor& grad, const at::Tensor& saved, int64_t act,
                                     double slope) {
  const auto a = static_cast<Activation>(act);
  switch (a) {
    case Activation::kRelu:
      return at::threshold_backward(grad, saved, 0);
    case Activation::kLeakyRelu:
      return at::leaky_relu_backward(grad, saved, slope, saves_output(a, slope));
    case Activation::kTanh:
      return at::tanh_backward(grad, saved);
    case Activation::kSigmoid:
      return at::sigmoid_backward(grad, saved);
    case Activation::kSilu: {  // (from its input)
      if (!at::GradMode::is_enabled()) return at::silu_backward(grad, saved);
      // silu_backward has no derivative: the differentiable form stock's autograd takes
      // (infinitely_differentiable_silu_backward)
      const at::Tensor s = at::sigmoid(saved);
      return grad * s * (1 + saved * (1 - s));
    }
    default:
      return grad;
  }
}

// A pool's ceil_mode as its output's size shows it: whether floor's size is smaller.
bool ceil_mode_of(const std::vector<int64_t>& in, const at::Tensor& grad_y,
                  const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                  const std::vector<int64_t>& padding) {
  bool ceil_mode = false;
  for (int i = 0; i < 2; ++i)
    ceil_mode |= conv_output_size(in[2 + i], kernel[i], stride[i], padding[i], 1) <
                 grad_y.size(2 + i);
  return ceil_mode;
}

// Whether a backward takes stock's composite, differentiated by autograd, instead of genkern's
// kernels: with create_graph=True (grad mode on inside it: the gradients must be
// differentiable), or on batched gradients (a backward under vmap, as
// autograd.grad(is_grads_batched=True) and jacobian(vectorize=True) run it: the kernels cannot
// read a batched tensor's storage) (genkern/ops/_fused.stock_backward).
bool stock_backward(const at::Tensor& grad) {
  return at::GradMode::is_enabled() || is_vmap_batched(grad);
}

// Where stock_backward: the gradients for x, weight, bias (those mask asks for) of y, stock's
// composite recomputed from the saved inputs, by autograd (composite_grads.h); with
// create_graph=True as differentiable functions of them and grad_y, so a second derivative (a
// WGAN-GP gradient penalty) is stock's (genkern/ops/_fused.differentiable_grads).
using Recompute =
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

std::array<at::Tensor, 3> differentiable_grads(const Recompute& recompute,
                                               std::array<at::Tensor, 3> inputs,
                                               std::array<bool, 3> mask, const at::Tensor& grad_y) {
  const auto composite = [&](const variable_list& in) -> variable_list {
    return {recompute(in[0], in[1], in[2])};
  };
  const variable_list g = composite_grads(composite, variable_list(inputs.begin(), inputs.end()),
                                          std::vector<bool>(mask.begin(), mask.end()), {grad_y});
  return {g[0], g[1], g[2]};
}

at::MemoryFormat format(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// act(z) in place, in the layout asked for (the GEMM paths' results: fresh tensors of ours).
at::Tensor activated(at::Tensor z, int64_t activation, double negative_slope, bool channels_last) {
  activation_(z, activation, negative_slope);
  return z.contiguous(format(channels_last));
}

// The batched-GEMM path as an inference candidate (conv_inference times it against the others):
// one-group float32 calls, unless GENKERN_CPU_CONV_GEMM is "never"; else none.
std::function<at::Tensor()> gemm_candidate(const at::Tensor& x, int64_t groups,
                                           std::function<at::Tensor()> gemm) {
  if (groups != 1 || x.scalar_type() != at::kFloat || conv_gemm_mode() == 0) return {};
  return gemm;
}

// The direct kernels of stem_conv.h as an inference candidate of conv2d with a channels_last
// output (any channel counts: at batch 1 they beat ATen's kernels on small 3x3 layers), on a
// weight packed once; relu and leaky_relu in their registers, other activations after. None
// where they cannot run.
PackedCandidate direct_candidate(const at::Tensor& x, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias,
                                 const std::vector<int64_t>& stride,
                                 const std::vector<int64_t>& padding,
                                 const std::vector<int64_t>& dilation, int64_t groups,
                                 int64_t activation, double negative_slope, bool channels_last) {
  // channels_last outputs only: an NCHW one would cost a transpose of the kernels' NHWC rows
  if (!stem_conv_available(x, weight, groups) ||
      conv_output_format(x, weight) != at::MemoryFormat::ChannelsLast)
    return {};
  const bool fused = stem_conv_fuses(activation);
  return {[weight] { return stem_pack_weight(weight); },
          [=, &x, &weight, &bias](const at::Tensor& packed) {
            at::Tensor z = stem_conv2d(x, weight, bias, stride, padding, dilation,
                                       fused ? activation : 0, negative_slope, packed);
            return fused ? z.contiguous(format(channels_last))
                         : activated(z, activation, negative_slope, channels_last);
          }};
}

// The Winograd F(2x2, 3x3) path of winograd_3x3.h as an inference candidate of conv2d (3x3
// stride-1 padding-1 one-group layers: at batch 1 it beats the direct and oneDNN paths on a CNN's
// 32+ channel layers), on its transformed weight; the activation after. Where a value is not
// finite it gives way to the regular path. None in Winograd mode never; kept untimed in always.
PackedCandidate winograd_candidate(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias,
                                   const std::vector<int64_t>& stride,
                                   const std::vector<int64_t>& padding,
                                   const std::vector<int64_t>& dilation, int64_t groups,
                                   int64_t activation, double negative_slope, bool channels_last,
                                   const std::function<at::Tensor()>& regular) {
  const int64_t mode = winograd_mode();
  if (mode == 0 || !winograd_3x3_available(x, weight, stride, padding, dilation, groups)) return {};
  return {[weight] { return winograd_3x3_pack_weight(weight); },
          [=, &x, &bias](const at::Tensor& packed) {
            at::Tensor z = winograd_3x3_conv2d(x, packed, bias, format(channels_last));
            return z.defined() ? activated(z, activation, negative_slope, channels_last)
                               : regular();
          },
          mode == 2};
}

// running += momentum * (batch - running), a 16-bit running statistic's in float32, rounded once
// (as torch: found by the fuzz, a float16 batch variance over 65504 made the running one inf).
void lerp_into(const at::Tensor& running, const at::Tensor& batch, double momentum) {
  if (running.scalar_type() == at::kHalf || running.scalar_type() == at::kBFloat16)
    running.copy_(running.to(at::kFloat).lerp_(batch.to(at::kFloat), momentum));
  else
    running.lerp_(batch.to(running.scalar_type()), momentum);
}

// running += momentum * (batch - running) for the statistics given, the variance unbiased (as
// torch), after a training batch of x gave mean and var.
void update_running_stats(const at::Tensor& x, const std::optional<at::Tensor>& running_mean,
                          const std::optional<at::Tensor>& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum) {
  at::NoGradGuard no_grad;
  const int64_t count = x.numel() / x.size(1);
  if (has(running_mean)) lerp_into(*running_mean, mean, momentum);
  if (has(running_var)) {
    const double factor = count > 1 ? double(count) / double(count - 1) : INFINITY;
    lerp_into(*running_var, var * factor, momentum);
  }
}

// An output the kernels made as a view of a buffer of theirs (a GEMM's result reshaped to the
// output's shape) as a tensor of its own on the same memory: autograd refuses in-place ops on a
// Function's outputs that are views (found by the fuzz: relu_() after a conv onto 1x1 pixels,
// a DCGAN head's ReLU(inplace=True)), which stock's outputs allow.
at::Tensor owned(at::Tensor y) {
  if (!y.defined() || !y.is_view()) return y;
  at::Tensor out = at::empty({0}, y.options());
  out.set_(y.storage(), y.storage_offset(), y.sizes(), y.strides());
  return out;
}

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Which of x, weight, bias need a gradient; their edges are numbered in that order, bias last and
// only when given.
std::array<bool, 3> input_mask(AutogradContext* ctx, bool has_bias) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
          has_bias && ctx->needs_input_grad(2)};
}

// Holds a bias in the node's saved_data, not saved (stock's backward does not read it, so a
// change to it in place before the backward must not raise): its value now and its place in
// the autograd graph now (genkern/ops/_fused.hold_bias).
void hold_bias(AutogradContext* ctx, const std::optional<at::Tensor>& bias) {
  const bool given = has(bias);
  ctx->saved_data["bias_value"] = given ? c10::IValue(bias->detach().clone()) : c10::IValue();
  ctx->saved_data["bias_edge"] = given ? input_edge(*bias) : c10::IValue();
}

// The held bias's value at the forward, a constant (the batch norm kernels' reads); none if none
// was given.
std::optional<at::Tensor> bias_value(AutogradContext* ctx) {
  const c10::IValue& value = ctx->saved_data["bias_value"];
  return value.isTensor() ? std::optional<at::Tensor>(value.toTensor()) : std::nullopt;
}

// The held bias for stock's composite: its value at the forward, in the graph where it was then
// (found by fuzzes: a step on it since, a change in place of a bias computed from a parameter,
// or its requires_grad turned on since, changed the gradients); none if none was given.
at::Tensor held_bias(AutogradContext* ctx) {
  const auto value = bias_value(ctx);
  return value ? reattached(*value, ctx->saved_data["bias_edge"]) : at::Tensor();
}

// Gradients for the forward's arguments: x, weight, bias, then none for the rest.
// no_gradient_reached: the Functions here do not materialize gradients, and a backward that gets
// none for its output (an undefined one) returns none, as stock's nodes do. A zero-filled one
// gave a batch norm's bias, and the conv before it, a .grad of 0.0 where stock leaves None: a
// gradient penalty through a conv after an eval batch norm, whose second derivative sends
// nothing into the conv's input (found by a fuzz; weight decay then moved those biases).
variable_list grads_for(size_t num_args, at::Tensor gx, at::Tensor gw, at::Tensor gb) {
  variable_list out(num_args);
  out[0] = std::move(gx);
  out[1] = std::move(gw);
  out[2] = std::move(gb);
  return out;
}

// The last batch norm output whose node keeps its input x rather than y (relu: y loses x where
// it is 0; any act when batch_norm_keeps_output says no): a conv that takes y as its input keeps
// x and the affine map instead and recomputes y in its backward (one elementwise pass), so y is
// freed once the forward is past it, not held until the backward (a DCGAN generator's BN + ReLU
// outputs: 7 MB of the 35 MB peak of a DCGAN-32 training step). Matched by identity and version:
// y modified in place or restrided before the conv, or x modified since, and y is kept as usual.
// Per thread, weak references (the slot keeps neither x nor y alive).
struct RecomputableOutput {
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  std::optional<WeakImpl> y, x;
  int64_t version = 0, x_version = 0, offset = 0;
  std::vector<int64_t> sizes, strides;
  BatchNormAffine affine;
  int64_t act = 0;
  double slope = 0.0;
};
thread_local RecomputableOutput last_recomputable;

void remember_recomputable(const at::Tensor& y, const at::Tensor& x, BatchNormAffine affine,
                           int64_t act, double slope) {
  last_recomputable = {RecomputableOutput::WeakImpl(y.getIntrusivePtr()),
                       RecomputableOutput::WeakImpl(x.getIntrusivePtr()),
                       y._version(),
                       x._version(),
                       y.storage_offset(),
                       y.sizes().vec(),
                       y.strides().vec(),
                       std::move(affine),
                       act,
                       slope};
}

void forget_recomputable() { last_recomputable = {}; }

// What recomputes a remembered output: the batch norm's input, affine map and activation.
struct Recomputation {
  at::Tensor x;
  BatchNormAffine affine;
  int64_t act;
  double slope;
};

// The recomputation of `input` when it is the remembered output, unchanged since; else none.
// None while saved-tensor hooks are active: they see what a node saves, and under a
// non-reentrant checkpoint the recomputation must save what the forward did, though its input
// is then a detached copy, not the batch norm's output (found by the fuzz: CheckpointError).
std::atomic<bool> g_recompute_under_hooks{false};  // set_recompute_under_saved_tensor_hooks

std::optional<Recomputation> recomputation_of(const at::Tensor& input) {
  const auto& r = last_recomputable;
  if (!r.y.has_value() || (!g_recompute_under_hooks.load(std::memory_order_relaxed) &&
                           at::SavedTensorDefaultHooks::get_hooks().has_value()))
    return std::nullopt;
  const auto y = r.y->lock();
  if (!y.defined() || y.get() != input.unsafeGetTensorImpl() || input._version() != r.version ||
      input.storage_offset() != r.offset || input.sizes() != r.sizes ||
      input.strides() != r.strides)
    return std::nullopt;
  // x changed in place since (possible once the batch norm's graph is freed, x kept by its
  // owner): y cannot be recomputed from it
  at::Tensor x(r.x->lock());
  if (!x.defined() || x._version() != r.x_version) return std::nullopt;
  return Recomputation{std::move(x), r.affine, r.act, r.slope};
}

// conv2d and conv_transpose2d (+ bias + activation): one Function, the kernels picked by
// `transposed` (output_padding is unused by conv2d).
struct ConvAct : public torch::autograd::Function<ConvAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> output_padding,
                            std::vector<int64_t> dilation, int64_t groups, bool transposed,
                            int64_t act, double slope, bool channels_last) {
    const bool keep = keeps_preact(act, slope);
    auto [y, preact] =
        transposed ? conv_transpose2d_act_forward_cpu(x, weight, bias, stride, padding,
                                                      output_padding, dilation, groups, act, slope,
                                                      keep)
                   : conv2d_act_forward_cpu(x, weight, bias, stride, padding, dilation, groups,
                                            act, slope, keep);
    y = owned(y.contiguous(format(channels_last)));
    // x a batch norm's output: keep what recomputes it instead
    const Recomputation r = recomputation_of(x).value_or(Recomputation{{}, {}, 0, 0.0});
    const bool recomputes = r.x.defined();
    ctx->save_for_backward({recomputes ? at::Tensor() : x, weight,
                            saved_for_backward(act, slope, y, preact), r.x, r.affine.center,
                            r.affine.scale, r.affine.shift});
    hold_bias(ctx, bias);  // (read only where stock_backward)
    ctx->saved_data["recomputes_input"] = recomputes;
    ctx->saved_data["input_edge"] = recomputes ? input_edge(x) : c10::IValue();
    ctx->saved_data["input_act"] = r.act;
    ctx->saved_data["input_slope"] = r.slope;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["output_padding"] = output_padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["transposed"] = transposed;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_bias"] = has(bias);
    ctx->set_materialize_grads(false);  // (see no_gradient_reached)
    return y;
  }

  // grads by reference: the engine's own list (CppNode::apply passes it as an lvalue), so that
  // grad_y moves into the kernels, which may write the activation's backward over it (one
  // layer-output-sized buffer less at a training step's memory peak).
  static variable_list backward(AutogradContext* ctx, variable_list& grads) {
    if (!grads[0].defined()) return variable_list(12);  // (see no_gradient_reached)
    const auto& d = ctx->saved_data;
    const bool transposed = d.at("transposed").toBool();
    const auto s = ctx->get_saved_variables();
    const auto mask = input_mask(ctx, d.at("has_bias").toBool());
    const auto stride = d.at("stride").toIntVector(), padding = d.at("padding").toIntVector();
    const auto dilation = d.at("dilation").toIntVector();
    const int64_t groups = d.at("groups").toInt(), act = d.at("act").toInt();
    const double slope = d.at("slope").toDouble();
    const auto output_padding = d.at("output_padding").toIntVector();
    // the input not kept (a batch norm's output), recomputed from the batch norm's input
    at::Tensor x = d.at("recomputes_input").toBool()
                       ? batch_norm_act_apply_cpu(s[3], {s[4], s[5], s[6]},
                                                  d.at("input_act").toInt(),
                                                  d.at("input_slope").toDouble())
                       : s[0];
    if (stock_backward(grads[0])) {
      // a recomputed x: put where the batch norm's output was in the graph
      if (d.at("recomputes_input").toBool()) x = reattached(x, d.at("input_edge"));
      const bool wide = run_16bit_in_float32(transposed, x, s[1], stride, padding,
                                             output_padding, dilation);
      const auto f = [&](const at::Tensor& t) {
        return wide && t.defined() ? t.to(at::kFloat) : t;
      };
      const auto conv = [&](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
        at::Tensor z = at::convolution(f(x), f(w), opt(f(b)), stride, padding, dilation,
                                       transposed, output_padding, groups);
        return stock_activation(wide ? z.to(x.scalar_type()) : z, act, slope);
      };
      auto [gx, gw, gb] = differentiable_grads(conv, {x, s[1], held_bias(ctx)}, mask, grads[0]);
      return grads_for(12, gx, gw, gb);
    }
    auto [gx, gw, gb] =
        transposed ? conv_transpose2d_act_backward_cpu(std::move(grads[0]), opt(s[2]), x, s[1],
                                                       stride, padding, output_padding, dilation,
                                                       groups, act, slope, mask)
                   : conv2d_act_backward_cpu(std::move(grads[0]), opt(s[2]), x, s[1], stride,
                                             padding, dilation, groups, act, slope, mask);
    return grads_for(12, gx, gw, gb);
  }
};

struct LinearAct : public torch::autograd::Function<LinearAct> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t act, double slope) {
    auto [y, preact] =
        linear_act_forward_cpu(x, weight, bias, act, slope, keeps_preact(act, slope));
    y = owned(y);
    ctx->save_for_backward({x, weight, saved_for_backward(act, slope, y, preact)});
    hold_bias(ctx, bias);
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_bias"] = has(bias);
    ctx->set_materialize_grads(false);  // (see no_gradient_reached)
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(5);
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const auto mask = input_mask(ctx, d.at("has_bias").toBool());
    if (stock_backward(grads[0])) {
      const auto linear = [&](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
        return stock_activation(at::linear(x, w, opt(b)), d.at("act").toInt(),
                                d.at("slope").toDouble());
      };
      auto [gx, gw, gb] =
          differentiable_grads(linear, {s[0], s[1], held_bias(ctx)}, mask, grads[0]);
      return grads_for(5, gx, gw, gb);
    }
    auto [gx, gw, gb] = linear_act_backward_cpu(grads[0], opt(s[2]), s[0], s[1],
                                                d.at("act").toInt(), d.at("slope").toDouble(),
                                                mask);
    return grads_for(5, gx, gw, gb);
  }
};

// [1, C, 1, ...]: a per-channel vector broadcast over x.
at::Tensor per_channel(const at::Tensor& v, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return v.view(shape);
}

// act(batch_norm(x)) by stock's differentiable ops, normalized by x's batch statistics in
// training, else by mean and invstd, in float32 for a 16-bit x (genkern/ops/batch_norm.py,
// _forward_torch).
at::Tensor stock_batch_norm_act(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias, at::Tensor mean, at::Tensor invstd,
                                bool training, double eps, int64_t act, double slope) {
  const bool wide = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  const at::Tensor xs = wide ? x.to(at::kFloat) : x;
  if (training) {
    std::vector<int64_t> dims{0};
    for (int64_t i = 2; i < x.dim(); ++i) dims.push_back(i);
    at::Tensor var;
    std::tie(var, mean) = at::var_mean(xs, dims, /*correction=*/0, /*keepdim=*/false);
    invstd = at::rsqrt(var + eps);
  }
  at::Tensor z = (xs - per_channel(mean, x)) * per_channel(invstd, x);
  if (weight.defined()) z = z * per_channel(weight.to(xs.scalar_type()), x);
  if (bias.defined()) z = z + per_channel(bias.to(xs.scalar_type()), x);
  return stock_activation(wide ? z.to(x.scalar_type()) : z, act, slope);
}

// Outputs y, mean, var (the statistics normalized with; the last two not differentiable).
struct BatchNormAct : public torch::autograd::Function<BatchNormAct> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool training,
                               double momentum, double eps, int64_t act, double slope) {
    BatchNormAffine affine;
    auto [y, mean, invstd, var, preact] = batch_norm_act_forward_affine_cpu(
        x, weight, bias, training ? std::nullopt : running_mean,
        training ? std::nullopt : running_var, training, 0.0, eps, act, slope,
        keeps_preact(act, slope), &affine);
    // before anything is saved, as stock's kernel does: a checkpoint's recomputation stops once
    // the tensors it needs are saved (found by the fuzz: the update was skipped)
    if (training) update_running_stats(x, running_mean, running_var, mean, var, momentum);
    y = owned(y);
    ctx->mark_non_differentiable({mean, var});
    // relu / leaky_relu: the backward recomputes the sign of act's input from x (no saved y),
    // or keeps y alone, in x's place (see batch_norm_keeps_output)
    const auto a = static_cast<Activation>(act);
    const bool keeps_y =
        batch_norm_keeps_output(x, weight, bias, training, act, slope, var, invstd);
    const bool recompute = a == Activation::kRelu ||
                           (a == Activation::kLeakyRelu && saves_output(a, slope));
    ctx->save_for_backward({keeps_y ? y : x, weight.value_or(at::Tensor()), mean, invstd,
                            recompute ? at::Tensor() : saved_for_backward(act, slope, y, preact)});
    const bool holds_y = keeps_y || (!recompute && a != Activation::kIdentity &&
                                     saves_output(a, slope));
    if (!holds_y)  // a conv taking y keeps x instead (see RecomputableOutput)
      remember_recomputable(y, x, std::move(affine), act, slope);
    else
      forget_recomputable();
    ctx->saved_data["keeps_output"] = keeps_y;
    // for a backward by stock's composite (create_graph=True, batched gradients): x's place in
    // the graph where y is kept instead
    ctx->saved_data["input_edge"] = keeps_y ? input_edge(x) : c10::IValue();
    // the bias as it is now, where the backward reads it (act's input recomputed from x, or x
    // from y, and the composite): a step changing it before this backward must not change the
    // gradient (found by fuzzes: a fused optimizer step, no version bump; a penalty after one)
    hold_bias(ctx, bias);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["training"] = training;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_weight"] = has(weight);
    ctx->saved_data["has_bias"] = has(bias);
    ctx->set_materialize_grads(false);  // (see no_gradient_reached)
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(10);
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const bool has_w = d.at("has_weight").toBool(), has_b = d.at("has_bias").toBool();
    // edges: x, then weight and bias when given
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), has_w && ctx->needs_input_grad(1),
                                   has_b && ctx->needs_input_grad(has_w ? 2 : 1)};
    const bool training = d.at("training").toBool();
    const int64_t act = d.at("act").toInt();
    const double slope = d.at("slope").toDouble();
    if (stock_backward(grads[0])) {
      at::Tensor x = s[0];
      if (d.at("keeps_output").toBool()) {  // x from y, put where x was in the graph
        {
          at::NoGradGuard no_grad;
          x = batch_norm_input_from_output(s[0], opt(s[1]), bias_value(ctx), s[2], s[3], slope);
        }
        x = reattached(x, d.at("input_edge"));
      }
      const double eps = d.at("eps").toDouble();
      const auto bn = [&](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
        return stock_batch_norm_act(x, w, b, s[2], s[3], training, eps, act, slope);
      };
      auto [gx, gw, gb] = differentiable_grads(bn, {x, s[1], held_bias(ctx)}, mask, grads[0]);
      return grads_for(10, gx, gw, gb);
    }
    auto [gx, gw, gb] = batch_norm_act_backward_cpu(grads[0], opt(s[4]), s[0], opt(s[1]), s[2],
                                                    s[3], training, act, slope, mask,
                                                    bias_value(ctx), d.at("keeps_output").toBool());
    const auto dtype = has_w ? s[1].scalar_type() : s[0].scalar_type();
    return grads_for(10, mask[0] ? gx : at::Tensor(), mask[1] ? gw.to(dtype) : at::Tensor(),
                     mask[2] ? gb.to(dtype) : at::Tensor());
  }
};

}  // namespace

at::Tensor conv2d_act_eager_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                                std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                int64_t groups, int64_t activation, double negative_slope,
                                bool channels_last) {
  if (wants_grad(x, weight, bias))
    return ConvAct::apply(x, weight, bias, stride, padding, std::vector<int64_t>{0, 0}, dilation,
                          groups, /*transposed=*/false, activation, negative_slope, channels_last);
  at::NoGradGuard no_grad;
  const auto regular = [&] {
    return std::get<0>(conv2d_act_forward_cpu(x, weight, bias, stride, padding, dilation, groups,
                                              activation, negative_slope, false))
        .contiguous(format(channels_last));
  };
  const auto gemm = [&] {
    return activated(conv2d_gemm(x, weight, bias, stride, padding, dilation), activation,
                     negative_slope, channels_last);
  };
  return conv_inference(false, x, weight, bias, stride, padding, {0, 0}, dilation, groups,
                        activation, negative_slope, channels_last, regular,
                        gemm_candidate(x, groups, gemm),
                        direct_candidate(x, weight, bias, stride, padding, dilation, groups,
                                         activation, negative_slope, channels_last),
                        winograd_candidate(x, weight, bias, stride, padding, dilation, groups,
                                           activation, negative_slope, channels_last, regular));
}

at::Tensor conv_transpose2d_act_eager_cpu(const at::Tensor& x, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias,
                                          std::vector<int64_t> stride, std::vector<int64_t> padding,
                                          std::vector<int64_t> output_padding,
                                          std::vector<int64_t> dilation, int64_t groups,
                                          int64_t activation, double negative_slope,
                                          bool channels_last) {
  if (wants_grad(x, weight, bias))
    return ConvAct::apply(x, weight, bias, stride, padding, output_padding, dilation, groups,
                          /*transposed=*/true, activation, negative_slope, channels_last);
  at::NoGradGuard no_grad;
  const auto regular = [&] {
    return std::get<0>(conv_transpose2d_act_forward_cpu(x, weight, bias, stride, padding,
                                                        output_padding, dilation, groups,
                                                        activation, negative_slope, false))
        .contiguous(format(channels_last));
  };
  const auto gemm = [&] {
    return activated(conv_transpose2d_gemm(x, weight, bias, stride, padding, output_padding,
                                           dilation),
                     activation, negative_slope, channels_last);
  };
  return conv_inference(true, x, weight, bias, stride, padding, output_padding, dilation, groups,
                        activation, negative_slope, channels_last, regular,
                        gemm_candidate(x, groups, gemm));
}

at::Tensor linear_act_eager_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t activation,
                                double negative_slope) {
  if (wants_grad(x, weight, bias))
    return LinearAct::apply(x, weight, bias, activation, negative_slope);
  at::NoGradGuard no_grad;
  return std::get<0>(linear_act_forward_cpu(x, weight, bias, activation, negative_slope, false));
}

at::Tensor batch_norm_act_eager_cpu(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias,
                                    const std::optional<at::Tensor>& running_mean,
                                    const std::optional<at::Tensor>& running_var, bool training,
                                    double momentum, double eps, int64_t activation,
                                    double negative_slope) {
  const at::Tensor xd = x.contiguous(x.suggest_memory_format());
  at::Tensor y, mean, var;
  if (wants_grad(x, weight, bias)) {
    return BatchNormAct::apply(xd, weight, bias, running_mean, running_var, training, momentum,
                               eps, activation, negative_slope)[0];
  }
  at::NoGradGuard no_grad;
  std::tie(y, mean, std::ignore, var, std::ignore) = batch_norm_act_forward_cpu(
      xd, weight, bias, training ? std::nullopt : running_mean,
      training ? std::nullopt : running_var, training, 0.0, eps, activation, negative_slope,
      false);
  if (training) update_running_stats(x, running_mean, running_var, mean, var, momentum);
  return y;
}

namespace {

// The input gradient of a pool, uninitialized, shaped like the pooled input and in its layout:
// the pools' backward kernels write all of it.
at::Tensor input_grad_empty(AutogradContext* ctx, const at::Tensor& like) {
  const auto shape = ctx->saved_data["shape"].toIntVector();
  const auto fmt = format(ctx->saved_data["channels_last"].toBool());
  return at::empty(shape, like.options().memory_format(fmt));
}

// The input gradient of a linear map (average pooling, nearest upsampling) where stock_backward:
// the vector-Jacobian product of its stock composite `forward` at a zero input of the input's
// shape and layout (a linear map's Jacobian is the same at every input); with create_graph=True
// a differentiable function of grad_y, so second derivatives are stock's (genkern/ops/_fused).
at::Tensor linear_map_grad(AutogradContext* ctx, const at::Tensor& grad_y,
                           const std::function<at::Tensor(const at::Tensor&)>& forward) {
  const at::Tensor x = input_grad_empty(ctx, grad_y).zero_().requires_grad_();
  const auto composite = [&](const variable_list& in) -> variable_list { return {forward(in[0])}; };
  return composite_grads(composite, {x}, {true}, {grad_y})[0];
}

// The input's shape and layout (for its gradient) and the pool's window, for the backward.
void save_pool_window(AutogradContext* ctx, const at::Tensor& x, at::MemoryFormat fmt,
                      const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                      const std::vector<int64_t>& padding) {
  ctx->saved_data["shape"] = x.sizes().vec();
  ctx->saved_data["channels_last"] = fmt == at::MemoryFormat::ChannelsLast;
  ctx->saved_data["kernel"] = kernel;
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["padding"] = padding;
}

// Outputs y = act(max pool) and the indices (not differentiable): torch's int64 flat indices
// when the caller asked for them, else, where they apply, the uint8 tap codes (an eighth of the
// bytes kept until the backward: 12.8 + 6.4 MB of the autoencoder step's int64 indices). Gradients
// are not materialized: the engine would otherwise hand the backward a zero-filled tensor for the
// indices' gradient (the buffer by which an earlier version of this Function raised a CNN step's
// peak), and a y that gets no gradient gets none here either.
struct MaxPool2d : public torch::autograd::Function<MaxPool2d> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               std::vector<int64_t> kernel, std::vector<int64_t> stride,
                               std::vector<int64_t> padding, std::vector<int64_t> dilation,
                               std::vector<int64_t> out_size, int64_t act, double slope,
                               bool with_indices) {
    const auto fmt = x.suggest_memory_format();
    const at::Tensor xd = x.contiguous(fmt);
    const bool codes =
        !with_indices && max_pool2d_takes_tap_codes(xd, kernel, stride, padding, dilation);
    auto [y, idx, preact] =
        codes ? max_pool2d_forward_tap_codes_cpu(xd, kernel, stride, padding, dilation, out_size,
                                                 act, slope, keeps_preact(act, slope))
              : max_pool2d_forward_cpu(xd, kernel, stride, padding, dilation, out_size, act,
                                       slope, keeps_preact(act, slope));
    y = owned(y.contiguous(fmt)), idx = idx.contiguous(fmt);
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({idx});
    ctx->save_for_backward({saved_for_backward(act, slope, y, preact), idx});
    save_pool_window(ctx, x, fmt, kernel, stride, padding);
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    // silu's second derivative differentiates its input, the pooled x: x's place in the graph
    if (static_cast<Activation>(act) == Activation::kSilu)
      ctx->saved_data["input_edge"] = input_edge(x);
    return {y, idx};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);
    if (!grads[0].defined()) return out;  // no gradient reached y
    auto& d = ctx->saved_data;
    const auto s = ctx->get_saved_variables();
    if (stock_backward(grads[0])) {
      out[0] = differentiable_grad(ctx, grads[0], s[0], s[1]);
      return out;
    }
    at::Tensor gx = input_grad_empty(ctx, grads[0]);
    if (gx.numel() == 0 || grads[0].numel() == 0) {
      out[0] = gx.zero_();
      return out;
    }
    out[0] = max_pool2d_backward_cpu(grads[0], opt(s[0]), s[1], gx, d["kernel"].toIntVector(),
                                     d["stride"].toIntVector(), d["padding"].toIntVector(),
                                     d["dilation"].toIntVector(), d["act"].toInt(),
                                     d["slope"].toDouble());
    return out;
  }

  // Given the indices, max pooling is a linear map: x at each window's maximum. Its input
  // gradient, differentiable (see linear_map_grad), of act's backward by stock's ops. silu's
  // backward reads its input, the pooled x, kept as a value: it is put in x's graph as that
  // value plus the map of a zero at x's edge, so its second derivative reaches x.
  static at::Tensor differentiable_grad(AutogradContext* ctx, const at::Tensor& grad_y,
                                        const at::Tensor& saved, const at::Tensor& indices) {
    auto& d = ctx->saved_data;
    const int64_t act = d["act"].toInt();
    const auto kernel = d["kernel"].toIntVector(), stride = d["stride"].toIntVector();
    const auto padding = d["padding"].toIntVector(), dilation = d["dilation"].toIntVector();
    std::function<at::Tensor(const at::Tensor&)> at_maxima;
    if (indices.scalar_type() == at::kByte) {
      // tap codes (windows that do not overlap): the maxima's indicator (the backward of ones)
      // masks x, and each window sums it
      // (of the indices' size: grad_y is batched under vmap, which the kernel cannot read)
      const at::Tensor ones = at::ones_like(indices, indices.options().dtype(grad_y.dtype()));
      const at::Tensor maxima =
          max_pool2d_backward_cpu(ones, std::nullopt, indices, input_grad_empty(ctx, ones),
                                  kernel, stride, padding, dilation, 0, 0.0);
      const bool ceil_mode = ceil_mode_of(d["shape"].toIntVector(), grad_y, kernel, stride,
                                          padding);
      at_maxima = [=](const at::Tensor& x) {
        return at::avg_pool2d(x * maxima, kernel, stride, padding, ceil_mode, false, 1);
      };
    } else {
      // flat indices into a plane; -1 (a window wholly in the padding) gives 0
      const at::Tensor flat = indices.reshape({indices.size(0), indices.size(1), -1});
      at_maxima = [=](const at::Tensor& x) {
        return x.reshape({x.size(0), x.size(1), -1})
            .gather(2, flat.clamp_min(0))
            .masked_fill(flat < 0, 0)
            .view(indices.sizes());
      };
    }
    at::Tensor act_input = saved;
    if (static_cast<Activation>(act) == Activation::kSilu) {
      const at::Tensor zero = input_grad_empty(ctx, saved).zero_();
      act_input = saved + at_maxima(reattached(zero, d.at("input_edge")));
    }
    const at::Tensor g = stock_activation_backward(grad_y, act_input, act, d["slope"].toDouble());
    return linear_map_grad(ctx, g, at_maxima);
  }
};

struct AvgPool2d : public torch::autograd::Function<AvgPool2d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, std::vector<int64_t> kernel,
                            std::vector<int64_t> stride, std::vector<int64_t> padding,
                            std::vector<int64_t> out_size, bool count_include_pad,
                            int64_t divisor_override) {
    const auto fmt = x.suggest_memory_format();
    save_pool_window(ctx, x, fmt, kernel, stride, padding);
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    return owned(avg_pool2d_forward_cpu(x.contiguous(fmt), kernel, stride, padding, out_size,
                                        count_include_pad, divisor_override)
                     .contiguous(fmt));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& d = ctx->saved_data;
    const auto kernel = d["kernel"].toIntVector(), stride = d["stride"].toIntVector();
    const auto padding = d["padding"].toIntVector();
    const bool count_include_pad = d["count_include_pad"].toBool();
    const int64_t divisor = d["divisor_override"].toInt();
    at::Tensor gx;
    if (stock_backward(grads[0])) {
      const bool ceil_mode = ceil_mode_of(d["shape"].toIntVector(), grads[0], kernel, stride,
                                          padding);
      gx = linear_map_grad(ctx, grads[0], [&](const at::Tensor& x) {
        return at::avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                              divisor ? std::optional<int64_t>(divisor) : std::nullopt);
      });
    } else {
      gx = avg_pool2d_backward_cpu(grads[0], input_grad_empty(ctx, grads[0]), kernel, stride,
                                   padding, count_include_pad, divisor);
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// y = x at each output pixel's nearest source pixel (the src_h / src_w tables); the backward sums
// the gradients of the outputs each input pixel fed.
struct UpsampleNearest2d : public torch::autograd::Function<UpsampleNearest2d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& src_h,
                            const at::Tensor& src_w, bool channels_last) {
    const auto fmt = format(channels_last);
    ctx->set_materialize_grads(false);
    ctx->saved_data["shape"] = x.sizes().vec();
    ctx->saved_data["channels_last"] = channels_last;
    ctx->save_for_backward({src_h, src_w});
    return owned(upsample_nearest2d_forward_cpu(x.contiguous(fmt), src_h, src_w).contiguous(fmt));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(4);
    if (!grads[0].defined()) return out;  // no gradient reached y
    const auto s = ctx->get_saved_variables();
    if (stock_backward(grads[0])) {  // x at the source pixels
      out[0] = linear_map_grad(ctx, grads[0], [&](const at::Tensor& x) {
        return x.index_select(2, s[0]).index_select(3, s[1]);
      });
      return out;
    }
    at::Tensor gx = input_grad_empty(ctx, grads[0]);
    out[0] = grads[0].numel() == 0 || gx.numel() == 0
                 ? gx.zero_()
                 : upsample_nearest2d_backward_cpu(grads[0], s[0], s[1], gx);
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> max_pool2d_eager_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                             std::vector<int64_t> stride,
                                             std::vector<int64_t> padding,
                                             std::vector<int64_t> dilation,
                                             std::vector<int64_t> out_size,
                                             int64_t activation, double negative_slope,
                                             bool with_indices) {
  if (wants_grad(x)) {
    auto out = MaxPool2d::apply(x, kernel, stride, padding, dilation, out_size, activation,
                                negative_slope, with_indices);
    if (!with_indices) out.pop_back();
    return out;
  }
  const auto fmt = x.suggest_memory_format();
  auto [y, idx, preact] = max_pool2d_forward_opt_indices_cpu(
      x.contiguous(fmt), kernel, stride, padding, dilation, out_size, activation, negative_slope,
      false, with_indices);
  return {y.contiguous(fmt), with_indices ? idx.contiguous(fmt) : idx};
}

at::Tensor avg_pool2d_eager_cpu(const at::Tensor& x, std::vector<int64_t> kernel,
                                std::vector<int64_t> stride, std::vector<int64_t> padding,
                                std::vector<int64_t> out_size, bool count_include_pad,
                                int64_t divisor_override) {
  if (wants_grad(x))
    return AvgPool2d::apply(x, kernel, stride, padding, out_size, count_include_pad,
                            divisor_override);
  const auto fmt = x.suggest_memory_format();
  return avg_pool2d_forward_cpu(x.contiguous(fmt), kernel, stride, padding, out_size,
                                count_include_pad, divisor_override)
      .contiguous(fmt);
}

at::Tensor upsample_nearest2d_eager_cpu(const at::Tensor& x, const at::Tensor& src_h,
                                       const at::Tensor& src_w, bool channels_last) {
  if (wants_grad(x)) return UpsampleNearest2d::apply(x, src_h, src_w, channels_last);
  const auto fmt = format(channels_last);
  return upsample_nearest2d_forward_cpu(x.contiguous(fmt), src_h, src_w).contiguous(fmt);
}

bool set_recompute_under_saved_tensor_hooks(bool on) {
  return g_recompute_under_hooks.exchange(on);
}

}  // namespace genkern::cpu
