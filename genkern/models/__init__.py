"""Reference models, each buildable as impl="genkern" (genkern layers with fused activations) or
impl="torch" (stock layers). Both builds have the same parameter and buffer names, so one
state_dict serves both."""

from genkern.models.autoencoder import AutoEncoder
from genkern.models.classifier import CNNClassifier
from genkern.models.dcgan import DCGANDiscriminator, DCGANGenerator
from genkern.models.vae import ConvVAE

__all__ = ["AutoEncoder", "CNNClassifier", "ConvVAE", "DCGANDiscriminator", "DCGANGenerator"]
