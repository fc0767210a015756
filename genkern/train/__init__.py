"""`genkern train {dcgan,vae,ae,cnn}`: train a reference model on scikit-learn's digits (bundled,
no download) or on --data (an .npz or a folder of images), with checkpoints, sample grids,
metrics.json, --resume, --amp, --compile, and DDP under torchrun."""

from __future__ import annotations

import argparse

from genkern import _args

MODELS = ("dcgan", "vae", "ae", "cnn")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a reference model (dcgan, vae, ae, cnn) on the bundled digits or --data",
        description=(
            "Train a genkern reference model. Without --data it trains on scikit-learn's "
            "handwritten digits (1,797 8x8 images, upsampled). Under `torchrun "
            "--nproc_per_node=N genkern train ...` it trains with DistributedDataParallel."
        ),
    )
    p.add_argument(
        "model", choices=MODELS, help="dcgan (GAN), vae, ae (autoencoder), cnn (classifier)"
    )
    p.add_argument(
        "--data",
        help="an .npz with an x or x_train array (optional y / y_train labels), or a folder of "
        "images (labels from subfolder names); default: scikit-learn's digits",
    )
    p.add_argument("--epochs", type=int, default=5, help="total epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="per process (default 64)")
    p.add_argument(
        "--lr",
        type=float,
        help="Adam learning rate (default: 2e-4 for dcgan, 1e-3 otherwise; with --resume, the "
        "checkpoint's, unless given)",
    )
    p.add_argument("--out", default="runs/train", help="checkpoints, images, metrics.json")
    p.add_argument("--impl", choices=("genkern", "torch"), default="genkern")
    p.add_argument(
        "--device", type=_args.device, help="cpu or cuda (default: cuda if available, else cpu)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from latest.pt in --out")
    p.add_argument("--amp", action="store_true", help="autocast (see --amp-dtype)")
    p.add_argument(
        "--amp-dtype",
        choices=("bf16", "fp16"),
        default="bf16",
        help="autocast dtype (default bf16; fp16 uses a GradScaler)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model(s)")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch (smoke runs)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--log-every", type=int, default=0, help="progress line every N steps")
    p.add_argument("--nz", type=int, default=100, help="dcgan: latent size (default 100)")
    p.add_argument("--width", type=int, help="dcgan: ngf = ndf (default 64)")
    p.add_argument("--image-size", type=int, help="dcgan: 32 or 64 (default 32)")
    p.add_argument("--latent-dim", type=int, default=20, help="vae: latent size (default 20)")
    p.add_argument(
        "--recon-loss", choices=("bce", "mse"), default="bce", help="ae: reconstruction loss"
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="cnn: held-out fraction")
    # for tests
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    p.add_argument("--debug-save-all-ranks", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args) -> int:
    from genkern.train.main import run

    return run(args)


__all__ = ["MODELS", "add_parser", "cmd_train"]
