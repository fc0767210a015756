#include "onednn_matmul.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <c10/core/Scalar.h>

#include <atomic>
#include <optional>
#include <string_view>

#include "path_mode.h"
#include "small_gemm.h"  // blas_as_wide_as_onednn

namespace genkern::cpu {
namespace {

std::atomic<int64_t> g_mode{1};

using LinearPointwise =
    at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
               std::string_view, c10::List<std::optional<c10::Scalar>>,
               std::optional<std::string_view>);

// mkldnn::_linear_pointwise(X, W, B, attr, scalars, algorithm): X W^T on oneDNN's matmul, which
// torch registers where it was built with oneDNN (its x86 builds); nullopt where it is not.
const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& linear_pointwise() {
  static const auto op = []() -> std::optional<c10::TypedOperatorHandle<LinearPointwise>> {
    const auto handle =
        c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU))
      return std::nullopt;
    return handle->typed<LinearPointwise>();
  }();
  return op;
}

}  // namespace

void set_onednn_matmul_mode(int64_t mode) { set_path_mode(g_mode, mode, "oneDNN matmul"); }

int64_t onednn_matmul_mode() { return g_mode.load(); }

bool use_onednn_matmul(const at::Tensor& a, const at::Tensor& b) {
  const int64_t mode = g_mode.load(std::memory_order_relaxed);
  if (mode == 0 || a.dim() != 2 || b.dim() != 2 || a.scalar_type() != at::kFloat ||
      b.scalar_type() != at::kFloat || a.layout() != at::kStrided ||
      b.layout() != at::kStrided || !a.is_cpu() || !b.is_cpu() || a.numel() == 0 ||
      b.numel() == 0 || !linear_pointwise().has_value())
    return false;
  return mode == 2 || !blas_as_wide_as_onednn();
}

at::Tensor onednn_matmul(const at::Tensor& a, const at::Tensor& b,
                         const std::optional<at::Tensor>& bias) {
  // X W^T + B with W = b^T (a view: oneDNN takes its strides)
  return linear_pointwise()->call(a, b.t(), bias, "none",
                                  c10::List<std::optional<c10::Scalar>>(), std::nullopt);
}

at::Tensor matmul_on_either(const at::Tensor& a, const at::Tensor& b,
                            const std::optional<at::Tensor>& bias) {
  if (use_onednn_matmul(a, b) && (!bias.has_value() || bias->scalar_type() == at::kFloat))
    return onednn_matmul(a, b, bias);
  return bias.has_value() ? at::addmm(*bias, a, b) : at::mm(a, b);
}

}  // namespace genkern::cpu
