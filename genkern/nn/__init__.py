"""Drop-in modules: each subclasses the torch.nn class it replaces, keeps its parameters and
state_dict keys, and adds `activation` / `negative_slope` where a fused activation applies."""

from genkern.nn.conv import Conv2d
from genkern.nn.convert import convert
from genkern.nn.losses import GANLoss, VAELoss

__all__ = ["Conv2d", "GANLoss", "VAELoss", "convert"]
