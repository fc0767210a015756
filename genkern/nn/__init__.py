"""Drop-in modules: each subclasses the torch.nn class it replaces, keeps its parameters and
state_dict keys, and adds `activation` / `negative_slope` where a fused activation applies."""

from genkern.nn.batchnorm import BatchNorm2d, fold_batch_norm
from genkern.nn.conv import Conv2d, ConvTranspose2d
from genkern.nn.convert import convert
from genkern.nn.freeze import freeze, unfreeze
from genkern.nn.fused_sequential import FusedSequential
from genkern.nn.linear import Linear
from genkern.nn.losses import GANLoss, VAELoss
from genkern.nn.pooling import AvgPool2d, MaxPool2d, Upsample

__all__ = [
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "FusedSequential",
    "Linear",
    "GANLoss",
    "MaxPool2d",
    "Upsample",
    "VAELoss",
    "convert",
    "fold_batch_norm",
    "freeze",
    "unfreeze",
]
