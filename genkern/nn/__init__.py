"""Drop-in modules: each subclasses the torch.nn class it replaces, keeps its parameters and
state_dict keys, and adds `activation` / `negative_slope` where a fused activation applies."""

from genkern.nn.conv import Conv2d
from genkern.nn.losses import GANLoss, VAELoss  # losses (issue 5)

__all__ = ["Conv2d"]
__all__ += ["GANLoss", "VAELoss"]
