"""The specification: every genkern op written with stock PyTorch ops, in the clearest form.

Tests, `genkern check` and the benchmarks compare against these (upcast to float64). The "torch"
backend runs them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genkern import activations as A


def activation(z: torch.Tensor, name: str | None, negative_slope: float = 0.01) -> torch.Tensor:
    """act(z) for an activation name (None is the identity)."""
    act = A.activation_id(name)
    if act == A.RELU:
        return F.relu(z)
    if act == A.LEAKY_RELU:
        return F.leaky_relu(z, negative_slope)
    if act == A.TANH:
        return torch.tanh(z)
    if act == A.SIGMOID:
        return torch.sigmoid(z)
    if act == A.SILU:
        return F.silu(z)
    return z


def activation_backward(
    grad: torch.Tensor, saved: torch.Tensor | None, act: int, negative_slope: float
) -> torch.Tensor:
    """grad * act'(z) from the saved tensor (act's output or input, see activations.saves_output),
    by ATen's own backward kernels; silu's in grad mode (a second derivative) by the
    differentiable form stock's autograd takes there (silu_backward has no derivative)."""
    aten = torch.ops.aten
    if act == A.RELU:
        return aten.threshold_backward(grad, saved, 0)
    if act == A.LEAKY_RELU:
        return aten.leaky_relu_backward(
            grad, saved, negative_slope, A.saves_output(act, negative_slope)
        )
    if act == A.TANH:
        return aten.tanh_backward(grad, saved)
    if act == A.SIGMOID:
        return aten.sigmoid_backward(grad, saved)
    if act == A.SILU:
        if torch.is_grad_enabled():
            s = torch.sigmoid(saved)
            return grad * s * (1 + saved * (1 - s))
        return aten.silu_backward(grad, saved)
    return grad


def conv2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    activation=None,
    negative_slope=0.01,
):
    """act(conv2d(x, weight, bias))."""
    z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return globals()["activation"](z, activation, negative_slope)


# ---- losses (issue 5) -------------------------------------------------------------------------


def discriminator_loss(real_logits, fake_logits, kind="bce"):
    """The discriminator's GAN loss of each kind (means over each tensor)."""
    r, f = real_logits, fake_logits
    if kind == "bce":
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "hinge":
        return F.relu(1 - r).mean() + F.relu(1 + f).mean()
    if kind == "wgan":
        return f.mean() - r.mean()
    if kind == "lsgan":
        return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()
    raise ValueError(f"unknown kind {kind!r}")


def generator_loss(fake_logits, kind="bce"):
    """The generator's GAN loss of each kind ("bce" is the non-saturating loss)."""
    f = fake_logits
    if kind == "bce":
        return F.softplus(-f).mean()
    if kind in ("hinge", "wgan"):
        return -f.mean()
    if kind == "lsgan":
        return 0.5 * ((f - 1) ** 2).mean()
    raise ValueError(f"unknown kind {kind!r}")


def vae_loss(
    recon,
    target,
    mu,
    logvar,
    recon_loss="bce",
    beta=1.0,
    reduction="sum",
    logits=True,
    return_components=False,
):
    """Reconstruction sum + beta * KL(N(mu, exp(logvar)) || N(0, 1)); "mean" divides by batch."""
    if recon_loss == "mse":
        rec = F.mse_loss(recon, target, reduction="sum")
    elif logits:
        rec = F.binary_cross_entropy_with_logits(recon, target, reduction="sum")
    else:
        rec = F.binary_cross_entropy(recon, target, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    if reduction == "mean":
        rec, kl = rec / recon.shape[0], kl / recon.shape[0]
    total = rec + beta * kl
    return (total, rec, kl) if return_components else total


def reparameterize(mu, logvar, eps):
    """mu + eps * exp(logvar / 2)."""
    return mu + eps * torch.exp(0.5 * logvar)


# ---- issue 4: batch_norm + activation, pooling, upsampling ---------------------------------------


def batch_norm(
    x,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    activation=None,
    negative_slope=0.01,
):
    """act(batch_norm(x)); running statistics updated in place in training, as F.batch_norm."""
    z = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return globals()["activation"](z, activation, negative_slope)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    return F.avg_pool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def upsample_nearest2d(x, scale_factor=None, size=None):
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")


# ---- transposed conv and linear (+ activation) ----


def conv_transpose2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    activation=None,
    negative_slope=0.01,
):
    """act(conv_transpose2d(x, weight, bias))."""
    z = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    return globals()["activation"](z, activation, negative_slope)


def linear(x, weight, bias=None, activation=None, negative_slope=0.01):
    """act(linear(x, weight, bias))."""
    z = F.linear(x, weight, bias)
    return globals()["activation"](z, activation, negative_slope)
