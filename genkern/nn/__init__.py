"""Drop-in modules: each subclasses the torch.nn class it replaces, keeps its parameters and
state_dict keys, and adds `activation` / `negative_slope` where a fused activation applies."""

from genkern.nn.conv import Conv2d, ConvTranspose2d  # ConvTranspose2d, Linear: issue 3
from genkern.nn.convert import convert
from genkern.nn.linear import Linear

__all__ = ["Conv2d", "ConvTranspose2d", "Linear", "convert"]
