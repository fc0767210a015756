"""genkern.ops: the public functional API. Each op is one torch.library custom op (namespace
"genkern") with a fake kernel and a registered backward, dispatched per call to a backend."""

from genkern.ops import (
    _col2im,  # noqa: F401  (applies GENKERN_CPU_COL2IM)
    _conv_gemm,  # noqa: F401  (applies GENKERN_CPU_CONV_GEMM)
    _conv_wgrad,  # noqa: F401  (applies GENKERN_CPU_CONV_WGRAD)
    _dot_gemm,  # noqa: F401  (applies GENKERN_CPU_DOT_GEMM)
    _flops,  # noqa: F401  (FlopCounterMode's formulas of the conv and linear ops)
    _head_convt,  # noqa: F401  (applies GENKERN_CPU_HEAD_CONVT)
    _onednn_layout,  # noqa: F401  (applies GENKERN_CPU_ONEDNN_LAYOUT)
    _onednn_matmul,  # noqa: F401  (applies GENKERN_CPU_ONEDNN_MATMUL)
    _prepacked,  # noqa: F401  (applies GENKERN_CPU_PREPACK)
    _stem_conv,  # noqa: F401  (applies GENKERN_CPU_STEM_CONV)
    _winograd,  # noqa: F401  (applies GENKERN_CPU_WINOGRAD)
)
from genkern.ops.batch_norm import batch_norm
from genkern.ops.conv2d import conv2d
from genkern.ops.conv_transpose2d import conv_transpose2d
from genkern.ops.linear import linear
from genkern.ops.losses import discriminator_loss, generator_loss, reparameterize, vae_loss
from genkern.ops.pool import avg_pool2d, max_pool2d, upsample_nearest2d

__all__ = [
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv_transpose2d",
    "linear",
    "discriminator_loss",
    "generator_loss",
    "max_pool2d",
    "reparameterize",
    "upsample_nearest2d",
    "vae_loss",
]
