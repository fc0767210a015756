"""Whole-model cases: a training step (forward, loss, backward, optimizer step) and batch-1
inference of the reference models, each provider on its own copy of the same initial model.

Stock providers run the impl="torch" build (eager NCHW as users write it, eager channels_last,
torch.compile); genkern providers run the impl="genkern" build under use_backend(backend) with
channels_last weights (convert(channels_last=True): activations NHWC from the first conv on, the
input as users pass it, NCHW), for inference as genkern.nn.convert(model.eval(), fold_bn=True)
(BatchNorm folded into the convs). The
first call of every provider computes the loss of the same first step, which is what is checked.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F

from genkern import models
from genkern.backends import use_backend
from genkern.bench.case import Case


@functools.cache
def _initial_state(name: str) -> dict:
    torch.manual_seed(0)
    return {k: copy.deepcopy(m.state_dict()) for k, m in SPECS[name]["build"]("torch").items()}


def _models(name, impl, device, dtype, channels_last):
    built = SPECS[name]["build"](impl)
    for key, m in built.items():
        m.load_state_dict(_initial_state(name)[key])
        m.to(device=device, dtype=dtype)
        if channels_last or impl == "genkern":  # genkern runs its best CPU layout, NHWC
            m.to(memory_format=torch.channels_last)
    return built


def _batch(name, device, dtype, channels_last, batch):
    gen = torch.Generator().manual_seed(1)
    shape, low = SPECS[name]["input"], SPECS[name].get("low", 0.0)
    x = (torch.rand((batch, *shape), generator=gen) * (1 - low) + low).to(device, dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, gen


def _gan_step(ms, x, gen, losses):
    g, d = ms["G"], ms["D"]
    og = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    z = torch.randn(x.shape[0], g.nz, generator=gen).to(x.device, x.dtype)

    def step():
        od.zero_grad(set_to_none=True)
        fake = g(z)
        loss_d = losses["d"](d(x), d(fake.detach()))
        loss_d.backward()
        od.step()
        og.zero_grad(set_to_none=True)
        loss_g = losses["g"](d(fake))
        loss_g.backward()
        og.step()
        return torch.stack([loss_d.detach(), loss_g.detach()]).float()

    return step


def _stock_gan_losses():
    bce = F.binary_cross_entropy_with_logits
    return {
        "d": lambda r, f: bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f)),
        "g": lambda f: bce(f, torch.ones_like(f)),
    }


def _genkern_gan_losses():
    from genkern import ops

    if not hasattr(ops, "discriminator_loss"):
        return _stock_gan_losses()
    return {
        "d": lambda r, f: ops.discriminator_loss(r, f, kind="bce"),
        "g": lambda f: ops.generator_loss(f, kind="bce"),
    }


def _single_step(model_fn, loss_fn, params, x):
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model_fn(x), x)
        loss.backward()
        opt.step()
        return loss.detach().float().reshape(1)

    return step


def _vae_loss(impl):
    def stock(out, x):
        recon, mu, logvar = out
        bce = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (bce + kl) / x.shape[0]

    from genkern import ops

    if impl == "torch" or not hasattr(ops, "vae_loss"):
        return stock
    return lambda out, x: ops.vae_loss(out[0], x, out[1], out[2], reduction="mean")


SPECS = {
    "dcgan64": dict(
        build=lambda impl: {
            "G": models.DCGANGenerator(image_size=64, impl=impl),
            "D": models.DCGANDiscriminator(image_size=64, impl=impl),
        },
        input=(3, 64, 64),
        low=-1.0,
        batch=64,
        sample=(100,),
    ),
    "dcgan32": dict(
        build=lambda impl: {
            "G": models.DCGANGenerator(image_size=32, impl=impl),
            "D": models.DCGANDiscriminator(image_size=32, impl=impl),
        },
        input=(3, 32, 32),
        low=-1.0,
        batch=64,
        sample=(100,),
    ),
    "autoencoder": dict(
        build=lambda impl: {"M": models.AutoEncoder(impl=impl)}, input=(1, 28, 28), batch=256
    ),
    "vae": dict(build=lambda impl: {"M": models.ConvVAE(impl=impl)}, input=(1, 28, 28), batch=128),
    "cnn": dict(
        build=lambda impl: {"M": models.CNNClassifier(impl=impl)}, input=(3, 32, 32), batch=128
    ),
}


def _train_runner(name):
    def runner(provider, device, dtype):
        impl = "genkern" if provider.startswith("genkern:") else "torch"
        cl = provider == "eager_cl"
        ms = _models(name, impl, device, dtype, cl)
        if provider == "compile":  # as users do: compile the models, not the optimizer step
            ms = {key: torch.compile(m) for key, m in ms.items()}
        x, gen = _batch(name, device, dtype, cl, SPECS[name]["batch"])
        if name.startswith("dcgan"):
            losses = _genkern_gan_losses() if impl == "genkern" else _stock_gan_losses()
            step = _gan_step(ms, x, gen, losses)
        elif name == "vae":
            m = ms["M"]
            eps = torch.randn(x.shape[0], m.latent_dim, generator=gen).to(device, dtype)
            step = _single_step(lambda inp: m(inp, eps), _vae_loss(impl), m.parameters(), x)
        elif name == "cnn":
            m = ms["M"]
            y = torch.randint(0, 10, (x.shape[0],), generator=gen).to(device)
            step = _single_step(m, lambda out, _: F.cross_entropy(out, y), m.parameters(), x)
        else:
            m = ms["M"]
            step = _single_step(
                m, lambda out, inp: F.binary_cross_entropy(out, inp), m.parameters(), x
            )
        if impl == "genkern":
            backend = provider.split(":", 1)[1]
            inner = step

            def step():
                with use_backend(backend):
                    return inner()

        return step

    return runner


def _infer_runner(name):
    def runner(provider, device, dtype):
        impl = "genkern" if provider.startswith("genkern:") else "torch"
        cl = provider == "eager_cl"
        ms = _models(name, impl, device, dtype, cl)
        key = "G" if "G" in ms else "M"
        m = ms[key].eval()
        if impl == "genkern":
            # genkern's inference recipe: eval BatchNorm folded into the convs, the weights frozen
            # (their packed copies checked by version, not by a read of the values per call)
            from genkern.nn import convert, freeze

            m = freeze(convert(m, fold_bn=True))
        if name == "vae":
            gen = torch.Generator().manual_seed(1)
            z = torch.randn(1, m.latent_dim, generator=gen).to(device, dtype)
            fn, arg = m.decoder, z
        elif "sample" in SPECS[name]:
            fn, arg = (
                m,
                torch.randn(1, 100, generator=torch.Generator().manual_seed(1)).to(device, dtype),
            )
        else:
            fn, arg = m, _batch(name, device, dtype, cl, 1)[0]
        if provider == "compile":
            fn = torch.compile(fn)
        backend = provider.split(":", 1)[1] if impl == "genkern" else None

        def infer():
            with torch.inference_mode():
                if backend is None:
                    return fn(arg)
                with use_backend(backend):
                    return fn(arg)

        return infer

    return runner


def _stock_flops(runner):
    """count_flops for a model case: the convolutions' and matrix products' FLOPs (forward and
    backward) of one call of the stock eager model, as torch.utils.flop_counter counts them: the
    work a roofline against the matmul peak is about (elementwise ops are not counted)."""

    def count(device, dtype):
        from torch.utils.flop_counter import FlopCounterMode

        run = runner("eager", device, dtype)
        run()  # the optimizer's state is made on its first step
        with FlopCounterMode(display=False) as counter:
            run()
        return float(counter.get_total_flops())

    return count


def _no_fn(*args, **kwargs):  # whole-model cases run through their runner
    raise NotImplementedError


CASES = [
    Case(
        name=f"model/{name}",
        family="model",
        shape=f"batch {SPECS[name]['batch']}",
        mode="training step",
        make_inputs=lambda device, dtype: [],
        stock=_no_fn,
        genkern=_no_fn,
        runner=_train_runner(name),
        count_flops=_stock_flops(_train_runner(name)),
        quick=False,
    )
    for name in SPECS
] + [
    Case(
        name=f"model/{name}"
        + ("-generator" if name.startswith("dcgan") else "-decoder" if name == "vae" else ""),
        family="model",
        shape="batch 1",
        mode="batch-1 inference",
        make_inputs=lambda device, dtype: [],
        stock=_no_fn,
        genkern=_no_fn,
        runner=_infer_runner(name),
        count_flops=_stock_flops(_infer_runner(name)),
        quick=name in ("dcgan32", "cnn"),
    )
    for name in SPECS
]
