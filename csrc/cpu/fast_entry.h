// Optimistic entries of the CPU backend's eager fast paths: one pybind11 call that takes the
// Python arguments as they came, checks that the call is the common case (plain eager mode, plain
// CPU float32/float64 tensors, valid arguments, backend "auto" or "cpu") and runs the op's eager
// path (eager_autograd.h, losses_autograd.h). Anything else returns None, and genkern/ops/*.py
// take their Python path, which validates with torch's wording and reaches the custom ops. At
// batch 1 and for small layers the Python front cost as much as the kernels; this costs ~1 us.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

namespace genkern::cpu {

namespace py = pybind11;

// genkern.use_backend()'s stack, mirrored for this thread: the entries resolve a call's "auto"
// to the innermost context's backend themselves (no Python call per op to ask).
void push_backend_context(const std::string& name);
void pop_backend_context();

// Each takes the public op's arguments in its order (genkern.ops.*), the `backend` argument last.
py::object linear_fast(py::handle x, py::handle weight, py::handle bias, py::handle activation,
                       py::handle negative_slope, py::handle backend);
py::object conv2d_fast(py::handle x, py::handle weight, py::handle bias, py::handle stride,
                       py::handle padding, py::handle dilation, py::handle groups,
                       py::handle activation, py::handle negative_slope, py::handle backend);
py::object conv_transpose2d_fast(py::handle x, py::handle weight, py::handle bias,
                                 py::handle stride, py::handle padding, py::handle output_padding,
                                 py::handle groups, py::handle dilation, py::handle activation,
                                 py::handle negative_slope, py::handle backend);
py::object batch_norm_fast(py::handle x, py::handle running_mean, py::handle running_var,
                           py::handle weight, py::handle bias, py::handle training,
                           py::handle momentum, py::handle eps, py::handle activation,
                           py::handle negative_slope, py::handle backend);
// real is None for the generator's loss.
py::object gan_loss_fast(py::handle real, py::handle fake, py::handle kind, bool discriminator,
                         py::handle backend);
py::object vae_loss_fast(py::handle recon, py::handle target, py::handle mu, py::handle logvar,
                         py::handle recon_loss, py::handle beta, py::handle reduction,
                         py::handle logits, py::handle return_components, py::handle backend);

py::object reparameterize_fast(py::handle mu, py::handle logvar, py::handle eps,
                               py::handle generator, py::handle backend);
py::object max_pool2d_fast(py::handle x, py::handle kernel_size, py::handle stride,
                           py::handle padding, py::handle dilation, py::handle ceil_mode,
                           py::handle return_indices, py::handle activation,
                           py::handle negative_slope, py::handle backend);
py::object avg_pool2d_fast(py::handle x, py::handle kernel_size, py::handle stride,
                           py::handle padding, py::handle ceil_mode, py::handle count_include_pad,
                           py::handle divisor_override, py::handle backend);

}  // namespace genkern::cpu
