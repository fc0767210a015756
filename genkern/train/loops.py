"""The four training tasks. Each builds its model(s) and optimizer(s) and runs one step on a
batch; with impl="genkern" the models are genkern builds and the losses genkern's fused ops,
with impl="torch" the stock builds and the stock loss composites, so the two can be compared."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn

from genkern import models, ops
from genkern.train import distributed, images

IMAGE_SIZE = {"dcgan": 32, "vae": 28, "ae": 28, "cnn": 32}
DEFAULT_LR = {"dcgan": 2e-4, "vae": 1e-3, "ae": 1e-3, "cnn": 1e-3}
BETAS = {"dcgan": (0.5, 0.999)}
SAMPLES = 64  # images in a sample grid


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialization: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Task:
    """Models, optimizers and the step of one model family."""

    name = ""
    uses_labels = False

    def __init__(self, args, device, info: distributed.DistInfo, channels: int, num_classes: int):
        self.args, self.device, self.info = args, device, info
        self.channels, self.num_classes = channels, num_classes
        self.impl = args.impl
        self.models: dict[str, nn.Module] = {}  # the raw modules (checkpoints, samples)
        self.extra: dict = {}  # task state that goes into checkpoints
        self.build()
        for m in self.models.values():
            m.to(device)
        self.wrapped = {k: self._wrap(m) for k, m in self.models.items()}
        lr = args.lr if args.lr is not None else DEFAULT_LR[self.name]
        betas = BETAS.get(self.name, (0.9, 0.999))
        self.optimizers = {
            k: torch.optim.Adam(m.parameters(), lr=lr, betas=betas) for k, m in self.models.items()
        }
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp_dtype]
        self.scaler = (
            torch.amp.GradScaler(device.type) if args.amp and args.amp_dtype == "fp16" else None
        )

    def _wrap(self, model: nn.Module) -> nn.Module:
        model = distributed.wrap(model, self.info, self.device)
        if self.args.compile:
            model = torch.compile(model)
        return model

    def autocast(self):
        if not self.args.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward_step(self, loss: torch.Tensor, name: str) -> None:
        opt = self.optimizers[name]
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)

    def after_steps(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def train(self, mode: bool = True) -> None:
        for m in self.models.values():
            m.train(mode)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the model's input range."""
        return x

    def build(self) -> None:
        raise NotImplementedError

    def step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, val) -> dict[str, float]:
        return {}

    def write_samples(self, path: str) -> str | None:
        return None

    def state(self) -> dict:
        return {
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "extra": self.extra,
        }

    def load_state(self, state: dict) -> None:
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for k, v in state.get("extra", {}).items():
            self.extra[k] = v.to(self.device) if torch.is_tensor(v) else v


def _grid_path(out: str, epoch: int) -> str:
    return os.path.join(out, f"samples_epoch{epoch}.png")


class DCGAN(Task):
    name = "dcgan"

    def build(self):
        a = self.args
        self.nz = a.nz
        size = a.image_size or IMAGE_SIZE["dcgan"]
        self.models["generator"] = models.DCGANGenerator(
            nz=a.nz, ngf=a.width or 64, nc=self.channels, image_size=size, impl=self.impl
        )
        self.models["discriminator"] = models.DCGANDiscriminator(
            ndf=a.width or 64, nc=self.channels, image_size=size, impl=self.impl
        )
        for m in self.models.values():
            dcgan_init(m)
        # fixed noise for the sample grids: drawn from its own generator, so it does not move
        # the training RNG
        g = torch.Generator().manual_seed(a.seed + 1)
        self.extra["fixed_noise"] = torch.randn(SAMPLES, a.nz, generator=g).to(self.device)

    def prepare(self, x):
        return x * 2 - 1  # tanh range

    def _d_loss(self, real_logits, fake_logits):
        if self.impl == "genkern":
            return ops.discriminator_loss(real_logits.float(), fake_logits.float(), kind="bce")
        ones = torch.ones_like(real_logits, dtype=torch.float32)
        zeros = torch.zeros_like(fake_logits, dtype=torch.float32)
        return F.binary_cross_entropy_with_logits(
            real_logits.float(), ones
        ) + F.binary_cross_entropy_with_logits(fake_logits.float(), zeros)

    def _g_loss(self, fake_logits):
        if self.impl == "genkern":
            return ops.generator_loss(fake_logits.float(), kind="bce")
        ones = torch.ones_like(fake_logits, dtype=torch.float32)
        return F.binary_cross_entropy_with_logits(fake_logits.float(), ones)

    def step(self, x, y):
        G, D = self.wrapped["generator"], self.wrapped["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        z = torch.randn(x.shape[0], self.nz, device=self.device)
        # D step: real vs detached fakes
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            fake = G(z)
            real_logits, fake_logits = D(x), D(fake.detach())
        d_loss = self._d_loss(real_logits, fake_logits)
        self.backward_step(d_loss, "discriminator")
        # G step: D's gradients of this pass are not needed, so DDP does not reduce them
        opt_g.zero_grad(set_to_none=True)
        no_sync = D.no_sync() if hasattr(D, "no_sync") else contextlib.nullcontext()
        with no_sync:
            with self.autocast():
                g_logits = D(fake)
            g_loss = self._g_loss(g_logits)
            self.backward_step(g_loss, "generator")
        self.after_steps()
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
        }

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        G = self.models["generator"]
        was = G.training
        G.eval()
        out = G(z.to(self.device)).float()
        G.train(was)
        return (out + 1) / 2

    def write_samples(self, path):
        return images.save_grid(self.sample(self.extra["fixed_noise"]), path)


class VAE(Task):
    name = "vae"

    def build(self):
        a = self.args
        self.models["vae"] = models.ConvVAE(
            latent_dim=a.latent_dim,
            image_size=a.image_size or IMAGE_SIZE["vae"],
            channels=self.channels,
            impl=self.impl,
        )
        g = torch.Generator().manual_seed(a.seed + 1)
        self.extra["fixed_noise"] = torch.randn(SAMPLES, a.latent_dim, generator=g).to(self.device)

    def step(self, x, y):
        opt = self.optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            recon, mu, logvar = self.wrapped["vae"](x)
        recon, mu, logvar = recon.float(), mu.float(), logvar.float()
        if self.impl == "genkern":
            loss, rec, kl = ops.vae_loss(
                recon, x, mu, logvar, "bce", reduction="mean", return_components=True
            )
        else:
            b = x.shape[0]
            rec = F.binary_cross_entropy_with_logits(recon, x, reduction="sum") / b
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
            loss = rec + kl
        self.backward_step(loss, "vae")
        self.after_steps()
        return {"loss": loss.detach(), "recon": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def write_samples(self, path):
        vae = self.models["vae"]
        was = vae.training
        vae.eval()
        out = torch.sigmoid(vae.decoder(self.extra["fixed_noise"]).float())
        vae.train(was)
        return images.save_grid(out, path)


class AE(Task):
    name = "ae"

    def build(self):
        self.models["ae"] = models.AutoEncoder(channels=self.channels, impl=self.impl)

    def _loss(self, recon, x):
        recon = recon.float()  # BCE on probabilities is refused under autocast: float32 here
        b = x.shape[0]
        if self.impl == "genkern":
            zero = recon.new_zeros(b, 1)
            return ops.vae_loss(
                recon,
                x,
                zero,
                zero,
                self.args.recon_loss,
                beta=0.0,
                reduction="mean",
                logits=False,
            )
        if self.args.recon_loss == "mse":
            return F.mse_loss(recon, x, reduction="sum") / b
        return F.binary_cross_entropy(recon, x, reduction="sum") / b

    def step(self, x, y):
        opt = self.optimizers["ae"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            recon = self.wrapped["ae"](x)
        loss = self._loss(recon, x)
        self.backward_step(loss, "ae")
        self.after_steps()
        return {"loss": loss.detach()}

    def set_sample_inputs(self, x: torch.Tensor) -> None:
        self.extra["sample_inputs"] = x[: SAMPLES // 2].to(self.device)

    @torch.no_grad()
    def write_samples(self, path):
        ae = self.models["ae"]
        was = ae.training
        ae.eval()
        x = self.extra["sample_inputs"]
        recon = ae(x).float()
        ae.train(was)
        # rows of 8: inputs, then their reconstructions
        rows = []
        for i in range(0, len(x), 8):
            rows += [x[i : i + 8].float(), recon[i : i + 8]]
        return images.save_grid(torch.cat(rows), path, nrow=8)


class CNN(Task):
    name = "cnn"
    uses_labels = True

    def build(self):
        self.models["classifier"] = models.CNNClassifier(
            num_classes=self.num_classes, channels=self.channels, impl=self.impl
        )

    def set_normalization(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
        self.extra["mean"], self.extra["std"] = mean.to(self.device), std.to(self.device)

    def prepare(self, x):
        return (x - self.extra["mean"]) / self.extra["std"]

    def step(self, x, y):
        opt = self.optimizers["classifier"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.wrapped["classifier"](x)
        loss = F.cross_entropy(logits.float(), y)
        self.backward_step(loss, "classifier")
        self.after_steps()
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss.detach(), "train_acc": acc}

    @torch.no_grad()
    def evaluate(self, val):
        """Accuracy and loss on the held-out split; each process takes every world_size-th
        batch of it and the counts are summed over processes."""
        if val is None:
            return {}
        xv, yv = val
        model = self.models["classifier"]
        was = model.training
        model.eval()
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        bs = max(self.args.batch_size, 256)
        starts = list(range(0, len(xv), bs))[self.info.rank :: self.info.world_size]
        for s in starts:
            x = self.prepare(xv[s : s + bs].to(self.device))
            y = yv[s : s + bs].to(self.device)
            with self.autocast():
                logits = model(x)
            stats[0] += F.cross_entropy(logits.float(), y, reduction="sum")
            stats[1] += (logits.argmax(1) == y).sum()
            stats[2] += len(y)
        model.train(was)
        distributed.all_reduce_sum(stats, self.info)
        n = max(stats[2].item(), 1.0)
        return {"val_loss": stats[0].item() / n, "val_acc": stats[1].item() / n}


TASKS = {t.name: t for t in (DCGAN, VAE, AE, CNN)}
