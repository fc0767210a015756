"""Drop-in modules: each subclasses the torch.nn class it replaces, keeps its parameters and
state_dict keys, and adds `activation` / `negative_slope` where a fused activation applies."""

from genkern.nn.conv import Conv2d

# issue 4: batch_norm + activation, pooling, upsampling
from genkern.nn.batchnorm import BatchNorm2d, fold_batch_norm  # isort: skip
from genkern.nn.pooling import AvgPool2d, MaxPool2d, Upsample  # isort: skip

__all__ = ["Conv2d"]
__all__ += ["BatchNorm2d", "fold_batch_norm", "MaxPool2d", "AvgPool2d", "Upsample"]
