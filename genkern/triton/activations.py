"""Activation math for Triton kernels: the mirror of csrc/include/genkern/activation.h.

Ids (constexpr `ACT`): 0 identity, 1 relu, 2 leaky_relu, 3 tanh, 4 sigmoid, 5 silu, as in
genkern/activations.py. The backward takes one saved tensor `s`: the activation's output for relu,
leaky_relu with slope >= 0, tanh and sigmoid, its input for silu and leaky_relu with a negative
slope (genkern.activations.saves_output). Everything is computed in float32; NaN propagates as in
torch (relu(NaN) = NaN; relu's backward gives 0 where s <= 0 even for a NaN grad).
"""

from __future__ import annotations

import triton
import triton.language as tl

from genkern import activations as _A

IDENTITY = tl.constexpr(_A.IDENTITY)
RELU = tl.constexpr(_A.RELU)
LEAKY_RELU = tl.constexpr(_A.LEAKY_RELU)
TANH = tl.constexpr(_A.TANH)
SIGMOID = tl.constexpr(_A.SIGMOID)
SILU = tl.constexpr(_A.SILU)


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)) in float32, the formula of the C++ header."""
    x = x.to(tl.float32)
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    """tanh in float32 without tl.math.tanh (absent from some versions and the interpreter).

    |x| < 0.625: the odd minimax polynomial of Cephes' tanhf (accurate to float precision, where
    1 - 2 / (exp(2|x|) + 1) would cancel); else 1 - 2 / (exp(2|x|) + 1), which saturates to 1 at
    large |x| (exp overflows to inf) and propagates NaN.
    """
    x = x.to(tl.float32)
    a = tl.abs(x)
    z = a * a
    p = -5.70498872745e-3 * z + 2.06390887954e-2
    p = p * z - 5.37397155531e-2
    p = p * z + 1.33314422036e-1
    p = p * z - 3.33332819422e-1
    small = a + a * z * p
    large = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    t = tl.where(a < 0.625, small, large)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def act_forward(x, ACT: tl.constexpr, slope):
    """act(x) in float32 for activation id ACT; `slope` is leaky_relu's negative slope."""
    x = x.to(tl.float32)
    if ACT == RELU:
        y = tl.where(x < 0.0, 0.0, x)
    elif ACT == LEAKY_RELU:
        y = tl.where(x > 0.0, x, x * slope)
    elif ACT == TANH:
        y = tanh(x)
    elif ACT == SIGMOID:
        y = sigmoid(x)
    elif ACT == SILU:
        y = x * sigmoid(x)
    else:
        y = x
    return y


@triton.jit
def act_backward(grad, s, ACT: tl.constexpr, slope):
    """grad * act'(z) in float32, from the saved tensor `s` (act's output or input, see above).

    For ACT == IDENTITY `s` is not read (pass anything, e.g. `grad`).
    """
    grad = grad.to(tl.float32)
    if ACT == RELU:
        g = tl.where(s.to(tl.float32) <= 0.0, 0.0, grad)
    elif ACT == LEAKY_RELU:
        g = tl.where(s.to(tl.float32) > 0.0, grad, grad * slope)
    elif ACT == TANH:
        sf = s.to(tl.float32)
        g = grad * (1.0 - sf * sf)
    elif ACT == SIGMOID:
        sf = s.to(tl.float32)
        g = grad * ((1.0 - sf) * sf)
    elif ACT == SILU:
        sf = s.to(tl.float32)
        sg = sigmoid(sf)
        g = grad * (sg * (1.0 + sf * (1.0 - sg)))
    else:
        g = grad
    return g
