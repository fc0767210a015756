# ruff: noqa: E501  (the table keeps one case per line)
"""The catalogue of bad inputs: ONE table, a row per case (adding a case is one line).

Each row: (op family, description, a lambda making the call, expected exception type, a regex of
the message). Every row runs eager and under torch.compile(fullgraph=True) (where Dynamo wraps
the error, the original message must be in the exception or its __cause__ / __context__ chain),
and never crashes the process. A row whose 6th column is a stock-PyTorch call checks that torch's
own message for the same bad input matches the same regex (wording like torch's).
"""

import re

import pytest
import torch
import torch.nn.functional as F

from genkern import ops

# Small valid inputs the bad calls are built from (bad in one respect each).
X = torch.randn(2, 3, 6, 6)
W = torch.randn(4, 3, 3, 3)
B = torch.randn(4)
WT = torch.randn(3, 4, 3, 3)  # transposed conv: [C_in, C_out / groups, kH, kW]
XL, WL, BL = torch.randn(5, 7), torch.randn(6, 7), torch.randn(6)
RM, RV = torch.zeros(3), torch.ones(3)
R, Fk = torch.randn(4), torch.randn(5)
REC, TGT, MU, LV = torch.randn(2, 3), torch.rand(2, 3), torch.randn(2, 2), torch.randn(2, 2)
META = torch.empty(4, 3, 3, 3, device="meta")
RM_GRAD, RV_GRAD = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
_c = lambda **kw: ops.conv2d(**{"x": X, "weight": W, "bias": B, **kw})
_t = lambda **kw: ops.conv_transpose2d(**{"x": X, "weight": WT, "bias": B, **kw})
_l = lambda **kw: ops.linear(**{"x": XL, "weight": WL, "bias": BL, **kw})
_bn = lambda **kw: ops.batch_norm(**{"x": X, "running_mean": RM, "running_var": RV, **kw})
_mp = lambda **kw: ops.max_pool2d(**{"x": X, "kernel_size": 2, **kw})
_ap = lambda **kw: ops.avg_pool2d(**{"x": X, "kernel_size": 2, **kw})
_up = lambda **kw: ops.upsample_nearest2d(**{"x": X, **kw})
_d = lambda **kw: ops.discriminator_loss(**{"real_logits": R, "fake_logits": Fk, **kw})
_g = lambda **kw: ops.generator_loss(**{"fake_logits": Fk, **kw})
_v = lambda **kw: ops.vae_loss(**{"recon": REC, "target": TGT, "mu": MU, "logvar": LV, **kw})
_r = lambda **kw: ops.reparameterize(**{"mu": MU, "logvar": LV, "eps": torch.randn(2, 2), **kw})
ACT = "activation must be None or one of 'relu', 'leaky_relu', 'tanh', 'sigmoid', 'silu'"
FLOAT = "expected a floating-point tensor for"
SAME_DTYPE = "to have the same dtype as"
DEVICES = "Expected all tensors to be on the same device"
BACKEND = "backend must be one of 'auto', 'torch', 'cpu', 'cuda', 'triton'"

# family, description, call, exception, message regex[, the stock PyTorch call]
# fmt: off
BAD_INPUTS = [
    # ---- conv2d
    ("conv2d", "unknown activation", lambda: _c(activation="gelu"), ValueError, ACT),
    ("conv2d", "activation not a str", lambda: _c(activation=1), ValueError, ACT),
    ("conv2d", "slope not a float", lambda: _c(negative_slope="0.1"), TypeError, "negative_slope must be a float"),
    ("conv2d", "integer input", lambda: _c(x=X.long()), TypeError, FLOAT + " 'input', but got torch.int64"),
    ("conv2d", "integer weight", lambda: _c(weight=W.int()), TypeError, FLOAT + " 'weight'"),
    ("conv2d", "complex input", lambda: _c(x=X.to(torch.complex64)), TypeError, FLOAT),
    ("conv2d", "input not a tensor", lambda: _c(x=[1.0]), TypeError, "argument 'input' must be Tensor, not list"),
    ("conv2d", "dtype mismatch", lambda: _c(weight=W.double()), RuntimeError, SAME_DTYPE),
    ("conv2d", "device mismatch", lambda: _c(weight=META), RuntimeError, DEVICES),
    ("conv2d", "2-D input", lambda: _c(x=X[0, 0]), RuntimeError, r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, but got input of size: \[6, 6\]", lambda: F.conv2d(X[0, 0], W)),
    ("conv2d", "5-D input", lambda: _c(x=X[None]), RuntimeError, r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d"),
    ("conv2d", "3-D weight", lambda: _c(weight=W[0]), RuntimeError, "Expected 4D weight for conv2d"),
    # found by fuzz round 22: the triton backend ran these
    ("conv2d", "no output channels", lambda: _c(weight=W[:0], bias=None, backend="triton"), RuntimeError, "Given groups=1, expected weight to be at least 1 at dimension 0", lambda: F.conv2d(X, W[:0])),
    ("conv2d", "channels mismatch", lambda: _c(x=X[:, :2]), RuntimeError, r"Given groups=1, weight of size \[4, 3, 3, 3\], expected input\[2, 2, 6, 6\] to have 3 channels, but got 2 channels instead", lambda: F.conv2d(X[:, :2], W)),
    ("conv2d", "groups do not divide", lambda: _c(x=torch.randn(1, 6, 5, 5), weight=torch.randn(4, 2, 3, 3), bias=None, groups=3), RuntimeError, "Given groups=3, expected weight to be divisible by 3 at dimension 0", lambda: F.conv2d(torch.randn(1, 6, 5, 5), torch.randn(4, 2, 3, 3), groups=3)),
    ("conv2d", "zero groups", lambda: _c(groups=0), RuntimeError, "non-positive groups is not supported", lambda: F.conv2d(X, W, groups=0)),
    ("conv2d", "zero stride", lambda: _c(stride=0), RuntimeError, "non-positive stride is not supported", lambda: F.conv2d(X, W, stride=0)),
    ("conv2d", "negative padding", lambda: _c(padding=-1), RuntimeError, "negative padding is not supported", lambda: F.conv2d(X, W, padding=-1)),
    ("conv2d", "zero dilation", lambda: _c(dilation=0), RuntimeError, "non-positive dilation is not supported", lambda: F.conv2d(X, W, dilation=0)),
    ("conv2d", "stride of 3 values", lambda: _c(stride=(1, 1, 1)), TypeError, "stride must be an int or a tuple of 2 ints"),
    ("conv2d", "kernel larger than input", lambda: _c(x=X[..., :2, :2]), RuntimeError, "Kernel size can't be greater than actual input size", lambda: F.conv2d(X[..., :2, :2], W)),
    ("conv2d", "bias size", lambda: _c(bias=torch.randn(5)), RuntimeError, r"expected bias to be 1-dimensional with 4 elements, but got bias of size \[5\] instead", lambda: F.conv2d(X, W, torch.randn(5))),
    ("conv2d", "'same' with stride", lambda: _c(padding="same", stride=2), ValueError, "padding='same' is not supported for strided convolutions", lambda: F.conv2d(X, W, padding="same", stride=2)),
    ("conv2d", "bad padding string", lambda: _c(padding="full"), ValueError, "Invalid padding string: 'full'", lambda: F.conv2d(X, W, padding="full")),
    ("conv2d", "unknown backend", lambda: _c(backend="metal"), ValueError, BACKEND),
    # ---- conv_transpose2d
    ("conv_transpose2d", "unknown activation", lambda: _t(activation="elu"), ValueError, ACT),
    ("conv_transpose2d", "slope not a float", lambda: _t(negative_slope=None), TypeError, "negative_slope must be a float"),
    ("conv_transpose2d", "integer input", lambda: _t(x=X.int()), TypeError, FLOAT + " 'input'"),
    ("conv_transpose2d", "integer bias", lambda: _t(bias=B.long()), TypeError, FLOAT + " 'bias'"),
    ("conv_transpose2d", "dtype mismatch", lambda: _t(bias=B.double()), RuntimeError, SAME_DTYPE),
    ("conv_transpose2d", "device mismatch", lambda: _t(weight=torch.empty(3, 4, 3, 3, device="meta")), RuntimeError, DEVICES),
    ("conv_transpose2d", "2-D input", lambda: _t(x=X[0, 0]), RuntimeError, r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv_transpose2d, but got input of size: \[6, 6\]", lambda: F.conv_transpose2d(X[0, 0], WT)),
    ("conv_transpose2d", "2-D weight", lambda: _t(weight=WT[0, 0]), RuntimeError, "Expected 4D weight for conv_transpose2d"),
    ("conv_transpose2d", "channels mismatch", lambda: _t(x=X[:, :2]), RuntimeError, r"Given transposed=1, weight of size \[3, 4, 3, 3\], expected input\[2, 2, 6, 6\] to have 3 channels, but got 2 channels instead", lambda: F.conv_transpose2d(X[:, :2], WT)),
    ("conv_transpose2d", "no input channels", lambda: _t(x=X[:, :0], weight=WT[:0], backend="triton"), RuntimeError, "Given groups=1, expected weight to be at least 1 at dimension 0", lambda: F.conv_transpose2d(X[:, :0], WT[:0], B)),
    ("conv_transpose2d", "groups do not divide", lambda: _t(groups=2, bias=None), RuntimeError, "Given groups=2, expected weight to be divisible by 2 at dimension 0", lambda: F.conv_transpose2d(X, WT, groups=2)),
    ("conv_transpose2d", "zero groups", lambda: _t(groups=0), RuntimeError, "non-positive groups is not supported", lambda: F.conv_transpose2d(X, WT, groups=0)),
    ("conv_transpose2d", "negative stride", lambda: _t(stride=-1), RuntimeError, "non-positive stride is not supported", lambda: F.conv_transpose2d(X, WT, stride=-1)),
    ("conv_transpose2d", "negative padding", lambda: _t(padding=-1), RuntimeError, "negative padding is not supported", lambda: F.conv_transpose2d(X, WT, padding=-1)),
    ("conv_transpose2d", "negative output_padding", lambda: _t(stride=2, output_padding=-1), RuntimeError, "negative output_padding is not supported", lambda: F.conv_transpose2d(X, WT, stride=2, output_padding=-1)),
    ("conv_transpose2d", "output_padding too large", lambda: _t(stride=2, output_padding=2), RuntimeError, "output padding must be smaller than either stride or dilation", lambda: F.conv_transpose2d(X, WT, stride=2, output_padding=2)),
    ("conv_transpose2d", "zero dilation", lambda: _t(dilation=0), RuntimeError, "non-positive dilation is not supported"),  # torch: a oneDNN error
    ("conv_transpose2d", "bias size", lambda: _t(bias=torch.randn(3)), RuntimeError, r"expected bias to be 1-dimensional with 4 elements, but got bias of size \[3\] instead", lambda: F.conv_transpose2d(X, WT, torch.randn(3))),
    ("conv_transpose2d", "output too small", lambda: _t(x=X[..., :1, :1], padding=2), RuntimeError, r"Calculated output size per channel: \(-1 x -1\). Output size is too small"),  # torch: a oneDNN error
    ("conv_transpose2d", "padding string", lambda: _t(padding="same"), TypeError, "padding must be an int or a tuple of 2 ints"),
    ("conv_transpose2d", "unknown backend", lambda: _t(backend="gpu"), ValueError, BACKEND),
    # ---- linear
    ("linear", "unknown activation", lambda: _l(activation="softmax"), ValueError, ACT),
    ("linear", "slope not a float", lambda: _l(negative_slope=[0.1]), TypeError, "negative_slope must be a float"),
    ("linear", "integer input", lambda: _l(x=XL.long()), TypeError, FLOAT + " 'input'"),
    ("linear", "integer weight", lambda: _l(weight=WL.long()), TypeError, FLOAT + " 'weight'"),
    ("linear", "bool input", lambda: _l(x=XL > 0), TypeError, FLOAT + " 'input', but got torch.bool"),
    ("linear", "dtype mismatch", lambda: _l(weight=WL.half()), RuntimeError, SAME_DTYPE),
    ("linear", "device mismatch", lambda: _l(bias=torch.empty(6, device="meta")), RuntimeError, DEVICES),
    ("linear", "0-D input", lambda: _l(x=torch.tensor(1.0)), RuntimeError, "both arguments to linear need to be at least 1D, but they are 0D and 2D", lambda: F.linear(torch.tensor(1.0), WL)),
    ("linear", "1-D weight with a bias", lambda: _l(weight=WL[0], bias=torch.randn(1)), RuntimeError, "mat2 must be a matrix, got 1-D tensor", lambda: F.linear(torch.randn(5, 7), WL[0], torch.randn(1))),
    ("linear", "3-D weight", lambda: _l(weight=WL[None], bias=None), RuntimeError, "Expected 2D weight for linear"),
    ("linear", "in_features mismatch", lambda: _l(x=torch.randn(5, 8)), RuntimeError, r"mat1 and mat2 shapes cannot be multiplied \(5x8 and 7x6\)", lambda: F.linear(torch.randn(5, 8), WL)),
    ("linear", "3-D input mismatch", lambda: _l(x=torch.randn(2, 5, 8)), RuntimeError, r"mat1 and mat2 shapes cannot be multiplied \(10x8 and 7x6\)", lambda: F.linear(torch.randn(2, 5, 8), WL)),
    ("linear", "bias size", lambda: _l(bias=torch.randn(5)), RuntimeError, r"The expanded size of the bias \[5\] must match the output size"),
    ("linear", "bias of more dims than the output", lambda: _l(bias=BL[None, None, None]), RuntimeError, r"The expanded size of the bias \[1, 1, 1, 6\]"),
    ("linear", "weight not a tensor", lambda: _l(weight=1.0), TypeError, "argument 'weight' must be Tensor, not float"),
    ("linear", "unknown backend", lambda: _l(backend="mps"), ValueError, BACKEND),
    # ---- batch_norm
    ("batch_norm", "unknown activation", lambda: _bn(activation="relu6"), ValueError, ACT),
    ("batch_norm", "slope not a float", lambda: _bn(negative_slope="x"), TypeError, "negative_slope must be a float"),
    ("batch_norm", "integer input", lambda: _bn(x=X.long()), TypeError, FLOAT + " 'input'"),
    ("batch_norm", "integer weight", lambda: _bn(weight=torch.ones(3, dtype=torch.int32)), TypeError, FLOAT + " 'weight'"),
    ("batch_norm", "integer running_mean", lambda: _bn(running_mean=torch.zeros(3, dtype=torch.long)), RuntimeError, "expected 'running_mean' to be a floating-point tensor"),
    ("batch_norm", "running_var on another device", lambda: _bn(running_var=torch.ones(3, device="meta")), RuntimeError, "expected 'running_var' to be a floating-point tensor on cpu"),
    ("batch_norm", "weight dtype mismatch", lambda: _bn(weight=torch.ones(3, dtype=torch.float64)), RuntimeError, SAME_DTYPE),
    ("batch_norm", "1-D input", lambda: _bn(x=torch.randn(3)), ValueError, r"expected 2D or higher input to batch_norm \(got 1D input\)"),
    ("batch_norm", "eval without running_mean", lambda: _bn(running_mean=None), RuntimeError, "running_mean must be defined in evaluation mode", lambda: F.batch_norm(X, None, RV)),
    ("batch_norm", "eval without running_var", lambda: _bn(running_var=None), RuntimeError, "running_var must be defined in evaluation mode", lambda: F.batch_norm(X, RM, None)),
    ("batch_norm", "training with running_mean alone", lambda: _bn(running_var=None, training=True), ValueError, "running_mean and running_var must either both be None or neither be None", lambda: F.batch_norm(X, RM, None, training=True)),
    ("batch_norm", "running_mean size", lambda: _bn(running_mean=torch.zeros(4)), RuntimeError, "running_mean should contain 3 elements not 4", lambda: F.batch_norm(X, torch.zeros(4), RV)),
    ("batch_norm", "weight size", lambda: _bn(weight=torch.ones(2)), RuntimeError, "weight should contain 3 elements not 2", lambda: F.batch_norm(X, RM, RV, torch.ones(2))),
    ("batch_norm", "bias size", lambda: _bn(bias=torch.ones(5)), RuntimeError, "bias should contain 3 elements not 5", lambda: F.batch_norm(X, RM, RV, None, torch.ones(5))),
    ("batch_norm", "stats and weight sizes", lambda: _bn(running_mean=torch.zeros(2), running_var=torch.ones(2), weight=torch.ones(2)), RuntimeError, "running_mean should contain 3 elements not 2", lambda: F.batch_norm(X, torch.zeros(2), torch.ones(2), torch.ones(2))),
    ("batch_norm", "one value per channel", lambda: _bn(x=torch.randn(1, 3), training=True), ValueError, "Expected more than 1 value per channel when training", lambda: torch.nn.BatchNorm1d(3)(torch.randn(1, 3))),
    ("batch_norm", "momentum not a float", lambda: _bn(momentum="0.1", training=True), TypeError, "momentum must be a float"),
    ("batch_norm", "running stats requiring grad", lambda: _bn(running_mean=RM_GRAD, training=True), RuntimeError, r"The function '\w*batch_norm' is not differentiable with respect to argument 'running_mean'. This input cannot have requires_grad True.", lambda: F.batch_norm(X, torch.zeros(3, requires_grad=True), RV, training=True)),
    ("batch_norm", "eval: running_var requiring grad", lambda: _bn(running_var=RV_GRAD), RuntimeError, "not differentiable with respect to argument 'running_var'", lambda: F.batch_norm(X, RM, torch.ones(3, requires_grad=True))),
    ("batch_norm", "unknown backend", lambda: _bn(backend="x"), ValueError, BACKEND),
    # ---- pooling and upsampling
    ("pool", "max: bool input", lambda: _mp(x=X > 0), NotImplementedError, "\"max_pool2d\" not implemented for 'Bool'", lambda: F.max_pool2d(X > 0, 2)),
    ("pool", "avg: int32 input", lambda: _ap(x=X.int()), NotImplementedError, "\"avg_pool2d\" not implemented for 'Int'", lambda: F.avg_pool2d(X.int(), 2)),
    ("pool", "max: 2-D input", lambda: _mp(x=X[0, 0]), RuntimeError, r"non-empty 3D or 4D \(batch mode\) tensor expected for input", lambda: F.max_pool2d(X[0, 0], 2)),
    ("pool", "avg: 5-D input", lambda: _ap(x=X[None]), RuntimeError, r"non-empty 3D or 4D \(batch mode\) tensor expected for input"),
    ("pool", "max: empty channels", lambda: _mp(x=X[:, :0]), RuntimeError, r"non-empty 3D or 4D \(batch mode\) tensor expected for input"),
    ("pool", "max: zero kernel", lambda: _mp(kernel_size=0, stride=1), RuntimeError, "kernel size should be greater than zero, but got kH: 0 kW: 0", lambda: F.max_pool2d(X, 0, 1)),
    ("pool", "max: zero kernel, default stride", lambda: _mp(kernel_size=0), RuntimeError, "stride should not be zero", lambda: F.max_pool2d(X, 0)),
    ("pool", "max: zero stride", lambda: _mp(stride=0), RuntimeError, "stride should not be zero", lambda: F.max_pool2d(X, 2, 0)),
    ("pool", "avg: negative stride", lambda: _ap(stride=-1), RuntimeError, "stride should be greater than zero"),
    ("pool", "max: zero dilation", lambda: _mp(dilation=0), RuntimeError, "dilation should be greater than zero, but got dilationH: 0 dilationW: 0", lambda: F.max_pool2d(X, 2, dilation=0)),
    ("pool", "max: negative padding", lambda: _mp(padding=-1), RuntimeError, "pad must be non-negative, but got pad: -1", lambda: F.max_pool2d(X, 2, padding=-1)),
    ("pool", "max: padding over half kernel", lambda: _mp(padding=2), RuntimeError, "pad should be at most half of effective kernel size, but got pad=2, kernel_size=2 and dilation=1", lambda: F.max_pool2d(X, 2, padding=2)),
    ("pool", "avg: padding over half kernel", lambda: _ap(padding=2), RuntimeError, "pad should be at most half of effective kernel size"),
    ("pool", "max: output too small", lambda: _mp(kernel_size=7), RuntimeError, r"Given input size: \(3x6x6\). Calculated output size: \(3x0x0\). Output size is too small", lambda: F.max_pool2d(X, 7)),
    ("pool", "avg: zero divisor", lambda: _ap(divisor_override=0), RuntimeError, "divisor must be not zero", lambda: F.avg_pool2d(X, 2, divisor_override=0)),
    ("pool", "avg: float divisor", lambda: _ap(divisor_override=1.5), TypeError, "divisor_override must be an int or None"),
    ("pool", "max: unknown activation", lambda: _mp(activation="gelu"), ValueError, ACT),
    ("pool", "max: slope not a float", lambda: _mp(activation="leaky_relu", negative_slope="x"), TypeError, "negative_slope must be a float"),
    ("pool", "max: kernel of 3 values", lambda: _mp(kernel_size=(2, 2, 2)), TypeError, "kernel_size must be an int or a tuple of 2 ints"),
    ("pool", "upsample: int64 input", lambda: _up(x=X.long(), scale_factor=2), NotImplementedError, "not implemented for 'Long'", lambda: F.interpolate(X.long(), scale_factor=2)),
    ("pool", "upsample: 3-D input", lambda: _up(x=X[0], scale_factor=2), ValueError, r"Only 4D input Tensors are supported for nearest 2D upsampling \(got 3D\)"),
    ("pool", "upsample: both size and scale", lambda: _up(size=4, scale_factor=2), ValueError, "only one of size or scale_factor should be defined", lambda: F.interpolate(X, size=4, scale_factor=2)),
    ("pool", "upsample: neither size nor scale", lambda: _up(), ValueError, "either size or scale_factor should be defined", lambda: F.interpolate(X)),
    ("pool", "upsample: zero size", lambda: _up(size=0), RuntimeError, "Input and output sizes should be greater than 0"),
    ("pool", "upsample: no channels", lambda: _up(x=X[:, :0], scale_factor=2), RuntimeError, r"Non-empty 4D data tensor expected but got a tensor with sizes \[2, 0, 6, 6\]", lambda: F.interpolate(X[:, :0], scale_factor=2)),
    ("pool", "upsample: scale of 3 values", lambda: _up(scale_factor=(2.0, 2.0, 2.0)), ValueError, "Input and scale_factor must have the same number of spatial dimensions"),
    ("pool", "max: unknown backend", lambda: _mp(backend="tpu"), ValueError, BACKEND),
    # ---- losses
    ("losses", "D: unknown kind", lambda: _d(kind="wasserstein"), ValueError, "kind must be one of 'bce', 'hinge', 'wgan', 'lsgan', but got 'wasserstein'"),
    ("losses", "G: unknown kind", lambda: _g(kind="ns"), ValueError, "kind must be one of 'bce', 'hinge', 'wgan', 'lsgan'"),
    ("losses", "D: integer logits", lambda: _d(real_logits=R.long()), TypeError, FLOAT + " 'real_logits'"),
    ("losses", "G: bool logits", lambda: _g(fake_logits=Fk > 0), TypeError, FLOAT + " 'fake_logits'"),
    ("losses", "D: device mismatch", lambda: _d(fake_logits=torch.empty(5, device="meta")), RuntimeError, DEVICES),
    ("losses", "G: not a tensor", lambda: _g(fake_logits=[0.5]), TypeError, "argument 'fake_logits' must be Tensor, not list"),
    ("losses", "VAE: target size", lambda: _v(target=torch.rand(2, 4)), ValueError, r"Target size \(torch.Size\(\[2, 4\]\)\) must be the same as input size \(torch.Size\(\[2, 3\]\)\)", lambda: F.binary_cross_entropy_with_logits(REC, torch.rand(2, 4))),
    ("losses", "VAE: logvar size", lambda: _v(logvar=torch.randn(2, 3)), ValueError, "logvar size"),
    ("losses", "VAE: integer target", lambda: _v(target=TGT.long()), TypeError, FLOAT + " 'target'"),
    ("losses", "VAE: probabilities, target dtype", lambda: _v(recon=torch.sigmoid(REC), target=TGT.double(), logits=False), RuntimeError, "Found dtype Double but expected Float", lambda: F.binary_cross_entropy(torch.sigmoid(REC), TGT.double())),
    ("losses", "VAE: recon_loss", lambda: _v(recon_loss="l1"), ValueError, "recon_loss must be one of 'bce', 'mse', but got 'l1'"),
    ("losses", "VAE: reduction", lambda: _v(reduction="none"), ValueError, "none is not a valid value for reduction", lambda: F.mse_loss(REC, TGT, reduction="none2")),
    ("losses", "VAE: beta not a float", lambda: _v(beta="1"), TypeError, "beta must be a float"),
    ("losses", "VAE: mean of 0-D", lambda: _v(recon=torch.tensor(0.5), target=torch.tensor(0.5), reduction="mean"), ValueError, "recon must have a batch dimension"),
    ("losses", "reparameterize: eps size", lambda: _r(eps=torch.randn(3)), ValueError, "eps size"),
    ("losses", "reparameterize: logvar size", lambda: _r(logvar=torch.randn(3)), ValueError, "logvar size"),
    ("losses", "reparameterize: integer mu", lambda: _r(mu=MU.long()), TypeError, FLOAT + " 'mu'"),
    ("losses", "G: unknown backend", lambda: _g(backend="metal"), ValueError, BACKEND),
]
# fmt: on
# The torch column of the reduction row passes a different bad value: torch's wording is
# "<value> is not a valid value for reduction".


def _row(r):
    return r if len(r) == 6 else (*r, None)


ROWS = [_row(r) for r in BAD_INPUTS]
IDS = [f"{r[0]}: {r[1]}" for r in ROWS]


def _messages(exc: BaseException) -> str:
    """The exception's message and those of its cause / context chain (Dynamo wraps errors)."""
    seen, parts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _chain_types(exc: BaseException) -> list[type]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(type(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def test_catalogue_has_at_least_15_cases_per_family():
    families = {}
    for r in ROWS:
        families[r[0]] = families.get(r[0], 0) + 1
    assert set(families) == {"conv2d", "conv_transpose2d", "linear", "batch_norm", "pool", "losses"}
    assert all(n >= 15 for n in families.values()), families


@pytest.mark.parametrize("family,desc,call,exc,pattern,stock", ROWS, ids=IDS)
def test_bad_input_eager(family, desc, call, exc, pattern, stock):
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize(
    "family,desc,call,exc,pattern,stock",
    [r for r in ROWS if r[5] is not None],
    ids=[i for i, r in zip(IDS, ROWS) if r[5] is not None],
)
def test_stock_torch_words_it_alike(family, desc, call, exc, pattern, stock):
    """Where torch has the same bad input, its message matches the same regex."""
    with pytest.raises(Exception) as info:
        stock()
    if desc == "VAE: reduction":
        pattern = "is not a valid value for reduction"
    assert re.search(pattern, str(info.value)), str(info.value)


# Rows whose message cannot survive torch.compile as is (see the test's docstring).
COMPILE_EXEMPT: dict[str, str] = {}


@pytest.mark.parametrize("family,desc,call,exc,pattern,stock", ROWS, ids=IDS)
def test_bad_input_compiled(family, desc, call, exc, pattern, stock):
    """Under torch.compile(fullgraph=True) the same error (possibly wrapped by Dynamo)."""
    if f"{family}: {desc}" in COMPILE_EXEMPT:
        pytest.skip(COMPILE_EXEMPT[f"{family}: {desc}"])
    compiled = torch.compile(call, fullgraph=True, backend="eager")
    with pytest.raises(Exception) as info:
        compiled()
    text = _messages(info.value)
    assert re.search(pattern, text), text[:2000]
    assert any(issubclass(t, exc) for t in _chain_types(info.value)) or exc.__name__ in text


@pytest.mark.parametrize(
    "family,desc,call,exc,pattern,stock",
    [r for r in ROWS if "expected a floating-point tensor" in r[4]],
    ids=[i for i, r in zip(IDS, ROWS) if "expected a floating-point tensor" in r[4]],
)
def test_non_floating_inputs_raise_what_stock_handlers_catch(
    family, desc, call, exc, pattern, stock
):
    # found by fuzz round 10a: stock's layers raise RuntimeError for integer, bool and complex
    # inputs; genkern's clearer TypeError slipped past `except RuntimeError` written for stock
    with pytest.raises(RuntimeError, match=pattern):
        call()
    with pytest.raises(TypeError, match=pattern):
        call()
