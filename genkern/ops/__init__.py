"""genkern.ops: the public functional API. Each op is one torch.library custom op (namespace
"genkern") with a fake kernel and a registered backward, dispatched per call to a backend."""

from genkern.ops.conv2d import conv2d

# losses (issue 5)
from genkern.ops.losses import (
    discriminator_loss,
    generator_loss,
    reparameterize,
    vae_loss,
)

__all__ = ["conv2d"]
__all__ += ["discriminator_loss", "generator_loss", "reparameterize", "vae_loss"]
