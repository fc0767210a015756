"""genkern.nn.freeze: declare a model's conv weights frozen for inference.

The CPU inference path keeps each conv weight packed in oneDNN's layout (csrc/cpu/prepacked.h) and
checks before each use that the weight still holds the values it was packed from: by a
fingerprint of the values, one read of the weight per call, since a write through `.data` (EMA
updates, old init code) leaves the version counter as it was. A frozen weight is checked by its
version counter alone: at batch 1 a DCGAN-64 generator's forward is ~0.4 ms (a third) faster. Any
tracked write still repacks (optimizer steps, load_state_dict, in-place ops under no_grad, .to()).
torch's fused optimizer steps (fused=True) write without bumping the counter: an optimizer hook
bumps it for frozen weights. A write through `.data` to a frozen weight is not seen until
unfreeze(), as a constant of torch.jit.freeze is not.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from genkern.nn.conv import Conv2d, ConvTranspose2d
from genkern.ops import _prepacked


def _mark(model: nn.Module, frozen: bool) -> nn.Module:
    for m in model.modules():
        # a parametrized weight is computed on each access: no tensor to freeze
        if isinstance(m, (Conv2d, ConvTranspose2d)) and not parametrize.is_parametrized(m):
            _prepacked.freeze_weight(m.weight, frozen)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Marks the weights of model's genkern conv layers frozen (see the module docstring);
    returns model. Typical: `freeze(convert(model.eval(), fold_bn=True))` for inference."""
    return _mark(model, True)


def unfreeze(model: nn.Module) -> nn.Module:
    """Undoes freeze(): the weights' values are checked again on every call; returns model."""
    return _mark(model, False)
