"""FLOP formulas of genkern's conv and linear custom ops for
torch.utils.flop_counter.FlopCounterMode, so that it counts a converted model's layers as it
counts stock's (found by a fuzz: it counted 0 for them). Each is stock's aten formula for the
same work; like stock's, the fused bias and activation count nothing. Registered when
torch.utils.flop_counter is imported (it imports triton: ~0.1 s that `import genkern` does not
pay otherwise), or at once where it already is."""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys

import torch

import genkern.ops.conv2d  # noqa: F401  (the modules that define the ops)
import genkern.ops.conv_transpose2d  # noqa: F401
import genkern.ops.linear  # noqa: F401

_MODULE = "torch.utils.flop_counter"


def register() -> None:
    from torch.utils import flop_counter as fc

    ops = torch.ops.genkern

    def conv(transposed: bool):
        def flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.conv_flop_count(x_shape, w_shape, out_shape[0], transposed=transposed)

        return flops

    def conv_backward(transposed: bool):
        def flops(grad_shape, _saved, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            mask = args[-2]  # (output_mask, then backend)
            return fc.conv_backward_flop(  # (stock's registered form: out_val, its shapes taken)
                grad_shape, x_shape, w_shape, None, None, None, None, transposed, None, None,
                mask, out_val=out_shape,
            )  # fmt: skip

        return flops

    def linear(x_shape, w_shape, *args, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]

    def linear_backward(grad_shape, _saved, x_shape, w_shape, *args, **kwargs) -> int:
        mask = args[-2]
        return (int(mask[0]) + int(mask[1])) * linear(x_shape, w_shape)

    for op, formula in (
        (ops.conv2d_act, conv(False)),
        (ops.conv_transpose2d_act, conv(True)),
        (ops.conv2d_act_backward, conv_backward(False)),
        (ops.conv_transpose2d_act_backward, conv_backward(True)),
        (ops.linear_act, linear),
        (ops.linear_act_backward, linear_backward),
    ):
        fc.register_flop_formula(op)(formula)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Runs register() right after torch.utils.flop_counter is first imported (once)."""

    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                exec_module(module)
                register()

            spec.loader.exec_module = exec_then_register
        return spec


if _MODULE in sys.modules:
    register()
else:
    sys.meta_path.insert(0, _RegisterOnImport())
