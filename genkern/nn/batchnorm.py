"""genkern.nn.BatchNorm2d (fused activation) and genkern.nn.fold_batch_norm."""

from __future__ import annotations

from collections import Counter

import torch
from torch.nn.utils import parametrize

from genkern import ops
from genkern.nn._fused import FusedActivationMixin, activation_module


class BatchNorm2d(FusedActivationMixin, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d + a fused activation; same arguments, buffers and state_dict keys.

    Extra arguments: `activation` (None, "relu", "leaky_relu", "tanh", "sigmoid", "silu"),
    `negative_slope` (for "leaky_relu"), `backend` (default "auto").
    """

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        activation: str | None = None,
        negative_slope: float = 0.01,
        backend: str = "auto",
    ):
        # bias=False is torch 2.13's (an affine scale without a shift); passed on only then, so
        # an older torch takes the default
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            **({} if bias else {"bias": False}),
        )
        self._init_activation(activation, negative_slope)
        self.backend = backend

    def forward(self, input: torch.Tensor, *, _folded: bool = False) -> torch.Tensor:
        self._check_input_dim(input)
        # torch.nn.modules.batchnorm._BatchNorm.forward, step for step
        factor = 0.0 if self.momentum is None else self.momentum
        training = self.training
        if training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = training or (self.running_mean is None and self.running_var is None)
        use_running = not training or self.track_running_stats
        return ops.batch_norm(
            input,
            self.running_mean if use_running else None,
            self.running_var if use_running else None,
            self.weight,
            self.bias,
            bn_training,
            factor,
            self.eps,
            self._call_activation(_folded),
            self.negative_slope,
            self.backend,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()


@torch.no_grad()
def _fold_into(conv: torch.nn.Module, bn: torch.nn.BatchNorm2d) -> None:
    """conv's weight and bias absorb bn's eval-time affine map (computed in float64)."""
    invstd = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(invstd)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(invstd)
    scale = gamma * invstd
    w = conv.weight.double()
    if isinstance(conv, torch.nn.ConvTranspose2d):  # weight: [in, out / groups, kh, kw]
        g = conv.groups
        w = w.view(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        w = w * scale.view(g, 1, -1, 1, 1)
        w = w.view(conv.weight.shape)
    else:
        w = w * scale.view(-1, 1, 1, 1)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(invstd)
    b = (b - bn.running_mean.double()) * scale + beta
    conv.weight.copy_(w.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = torch.nn.Parameter(b.to(conv.weight.dtype))
    else:
        conv.bias.copy_(b.to(conv.bias.dtype))


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Folds every eval-mode BatchNorm2d (with running statistics) that directly follows a
    Conv2d / ConvTranspose2d in a Sequential into that conv's weight and bias, in place.

    The BatchNorm is replaced by its fused activation (a genkern.nn.Conv2d without one takes it
    over) or by Identity. Returns the model.
    """
    from genkern.nn.convert import _hooked
    from genkern.nn.fused_sequential import chains_children

    # a conv registered in several places, or whose weight or bias another module shares, keeps
    # its weights (the fold would reach every use)
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for module in model.modules():
        if not chains_children(module):
            continue
        names = list(module._modules.keys())
        for prev, name in zip(names[:-1], names[1:], strict=True):
            conv, bn = module._modules[prev], module._modules[name]
            if not isinstance(conv, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                continue
            # a parametrized weight (spectral_norm, weight_norm) is computed on each access:
            # the fold would be written into a temporary and lost
            if parametrize.is_parametrized(conv):
                continue
            if uses[id(conv)] > 1 or any(
                p is not None and shared[id(p)] > 1 for p in (conv.weight, conv.bias)
            ):
                continue
            # the BatchNorm follows the conv's own activation (genkern's fused one): not linear
            if getattr(conv, "activation", None) is not None:
                continue
            # a hook on the BatchNorm would be dropped; one on the conv's output or its
            # gradient would see the folded conv's
            if conv._forward_hooks or conv._backward_hooks or conv._backward_pre_hooks:
                continue
            if _hooked(bn):
                continue
            if not isinstance(bn, torch.nn.BatchNorm2d) or bn.training:
                continue
            if bn.running_mean is None or bn.running_var is None:
                continue
            if (
                conv.weight.shape[0 if isinstance(conv, torch.nn.Conv2d) else 1]
                * (1 if isinstance(conv, torch.nn.Conv2d) else conv.groups)
                != bn.num_features
            ):
                continue
            act = getattr(bn, "activation", None)
            slope = getattr(bn, "negative_slope", 0.01)
            _fold_into(conv, bn)
            if act is None:
                module._modules[name] = torch.nn.Identity()
            elif getattr(conv, "activation", "no") is None:
                conv.activation, conv.negative_slope = act, slope
                module._modules[name] = torch.nn.Identity()
            else:
                module._modules[name] = activation_module(act, slope)
    return model
