"""The training driver behind `genkern train`: data, task, DataLoader (seeded; a
DistributedSampler under torchrun), the epoch loop, checkpoints, sample grids, metrics.json."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from genkern.train import checkpoint, data, distributed
from genkern.train.loops import IMAGE_SIZE, TASKS
from genkern.train.progress import Progress, format_losses

STEP_LOSSES_KEPT = 20  # metrics.json keeps the losses of the first steps of a run


def _fail(message: str) -> int:
    print(f"genkern train: {message}", file=sys.stderr)
    return 2


def _check_args(args) -> str | None:
    for name in ("epochs", "batch_size", "max_steps", "limit", "nz", "width", "latent_dim"):
        v = getattr(args, name)
        if v is not None and v < 1:
            return f"--{name.replace('_', '-')} must be at least 1, but got {v}"
    if args.num_workers < 0:
        return f"--num-workers must be at least 0, but got {args.num_workers}"
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        return f"--lr must be a positive finite number, but got {args.lr}"
    if not 0 < args.val_fraction < 1:
        return f"--val-fraction must be in (0, 1), but got {args.val_fraction}"
    if args.image_size is not None and args.model == "dcgan" and args.image_size not in (32, 64):
        return f"--image-size must be 32 or 64 for dcgan, but got {args.image_size}"
    if args.image_size is not None and args.model == "vae" and args.image_size % 4:
        return f"--image-size must be a multiple of 4 for vae, but got {args.image_size}"
    if args.image_size is not None and args.model in ("ae", "cnn"):
        return (
            f"--image-size applies to dcgan and vae only ({args.model} is built for a fixed size)"
        )
    return None


def _check_backend(args, device: torch.device) -> str | None:
    """Whether GENKERN_BACKEND names a backend that runs this model's genkern ops here."""
    from genkern import backends

    try:
        name = backends.requested_backend()
    except ValueError as exc:  # a name that is no backend
        return str(exc)
    if name == "auto" or args.impl != "genkern":  # --impl torch runs no genkern op
        return None
    dtypes = [torch.float32]
    if args.amp:
        dtypes.append({"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp_dtype])
    for dtype in dtypes:
        reason = backends.unavailable_reason(name, device, dtype)
        if reason is not None:
            here = ", ".join(repr(b) for b in backends.available_backends(device, dtype))
            return (
                f"GENKERN_BACKEND: backend {name!r} is not available for {dtype} tensors on "
                f"{device.type}: {reason}. Available here: {here}."
            )
    return None


def _check_extras(args) -> str | None:
    missing = []
    if args.data is None:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            missing.append("scikit-learn")
    if args.model != "cnn" or (args.data is not None and os.path.isdir(args.data)):
        try:
            import PIL  # noqa: F401
        except ImportError:
            missing.append("Pillow")
    return data.NEEDS_EXTRA if missing else None


def run(args) -> int:
    problem = _check_args(args) or _check_extras(args)
    if problem:
        return _fail(problem)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda: CUDA is not available here")
    problem = _check_backend(args, device)
    if problem:
        return _fail(problem)
    info, device = distributed.setup(device)
    try:
        return _train(args, device, info)
    except (data.DataError, checkpoint.CheckpointError) as e:
        return _fail(str(e))
    finally:
        distributed.cleanup(info)


# the arguments that decide a model's parameters (sizes, classes, channels)
MODEL_ARGS = ("nz", "width", "image_size", "latent_dim", "data", "limit")


def _resume_mismatch(args, ckpt: dict, exc: Exception) -> str:
    """Why a checkpoint's state does not load into this run's model: the model arguments that
    differ from those of the run that wrote it (the checkpoint keeps them), else torch's error."""
    path = os.path.join(args.out, checkpoint.LATEST)
    saved = ckpt.get("args") or {}
    shown = lambda v: "default" if v is None else str(v)
    differ = [
        f"--{k.replace('_', '-')} {shown(getattr(args, k))} (the checkpoint's run: "
        f"{shown(saved[k])})"
        for k in MODEL_ARGS
        if k in saved and saved[k] != getattr(args, k)
    ]
    if differ:
        return (
            f"--resume: {path} holds a model of other sizes: "
            + ", ".join(differ)
            + "; resume with the same arguments as the run that wrote it"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"--resume: {path} does not fit this {args.model} model ({first})"


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _load_data(args):
    size = args.image_size or IMAGE_SIZE[args.model]
    x, y, test, desc = data.load(args.data, size, args.limit)
    channels = 3 if args.model == "cnn" else x.shape[1]
    x = data.match_channels(x, channels)
    val = None
    if args.model == "cnn":
        if y is None:
            raise data.DataError(
                f"--data {args.data}: cnn needs labels: a y / y_train array in the .npz, or "
                "one subfolder of images per class"
            )
        for labels in (y, None if test is None else test[1]):
            if labels is not None and len(labels) and int(labels.min()) < 0:
                raise data.DataError(
                    f"--data {args.data}: labels must be class indices 0, 1, ..., "
                    f"num_classes - 1, but got {int(labels.min())}"
                )
        if test is not None:
            val = (data.match_channels(test[0], channels), test[1])
        else:
            (x, y), val = data.split(x, y, args.val_fraction, args.seed)
            if len(x) == 0 or len(val[0]) == 0:
                n = len(x) + len(val[0])
                raise data.DataError(
                    f"--val-fraction {args.val_fraction} of {n} labelled image(s) from {desc} "
                    f"leaves {len(x)} to train on and {len(val[0])} held out: cnn needs at "
                    "least one of each (more images, or another --val-fraction)"
                )
    return x, y, val, channels, desc


def _write_json(obj, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _gather_rng(loader_gen, info) -> list:
    state = checkpoint.rng_state(loader_gen)
    if not info.enabled:
        return [state]
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _train(args, device, info) -> int:
    main = info.is_main
    say = print if main else (lambda *a, **k: None)
    _seed_all(args.seed)
    x, y, val, channels, desc = _load_data(args)
    num_classes = int(max(y.max(), val[1].max())) + 1 if args.model == "cnn" else 10
    task = TASKS[args.model](args, device, info, channels, num_classes)
    if args.model == "cnn":
        task.set_normalization(x)
    if args.model == "ae":
        task.set_sample_inputs(
            x[torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:32]]
        )
    # training randomness (noise, eps) differs per process; the models started the same
    _seed_all(args.seed + info.rank)
    labels = y if y is not None else torch.zeros(len(x), dtype=torch.int64)
    dataset = TensorDataset(x, labels)
    loader_gen = torch.Generator().manual_seed(args.seed)
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=args.seed
        )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=loader_gen,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
    )
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:  # an existing file, a path under one, no permission: one line
        return _fail(f"--out {args.out}: {exc.strerror}")
    start_epoch, history, global_step = 1, [], 0
    if args.resume:
        ckpt = checkpoint.load_latest(args.out)  # on the CPU: RNG states must stay there
        if ckpt["model"] != args.model:
            return _fail(
                f"--resume: {args.out} holds a {ckpt['model']} checkpoint, not {args.model}"
            )
        try:
            task.load_state(ckpt["task"])
        except (RuntimeError, KeyError, ValueError) as exc:  # another model's sizes, keys
            return _fail(_resume_mismatch(args, ckpt, exc))
        if args.lr is not None:  # given: it replaces the learning rate the optimizers saved
            saved_lrs = sorted({g["lr"] for o in task.optimizers.values() for g in o.param_groups})
            for o in task.optimizers.values():
                for g in o.param_groups:
                    g["lr"] = args.lr
            say(
                f"--lr {args.lr} replaces the checkpoint's learning rate "
                + ", ".join(f"{v:g}" for v in saved_lrs)
            )
        rng = ckpt["rng"]
        if len(rng) == info.world_size:
            checkpoint.set_rng_state(rng[info.rank], loader_gen)
        else:  # a different number of processes: fresh per-process streams
            _seed_all(args.seed + info.rank + 1000 * ckpt["epoch"])
            loader_gen.manual_seed(args.seed + ckpt["epoch"])
        start_epoch, history, global_step = ckpt["epoch"] + 1, ckpt["metrics"], ckpt["step"]
        say(f"resumed from {os.path.join(args.out, checkpoint.LATEST)} (epoch {ckpt['epoch']})")
    say(
        f"genkern train {args.model}: impl {args.impl}, {device}"
        + (f" x{info.world_size} (DDP)" if info.enabled else "")
        + f", {len(x)} images {tuple(x.shape[1:])} from {desc}"
        + (f", {len(val[0])} held out" if val is not None else "")
        + (f", amp {args.amp_dtype}" if args.amp else "")
        + (", compiled" if args.compile else "")
    )
    if start_epoch > args.epochs:
        say(f"nothing to do: {args.out} is already at epoch {start_epoch - 1} of {args.epochs}")
        return 0
    step_losses: list[dict] = []
    wrote_samples = False  # cnn writes none
    run_start = time.perf_counter()
    steps_per_epoch = len(loader) if args.max_steps is None else min(len(loader), args.max_steps)
    for epoch in range(start_epoch, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        task.train(True)
        progress = Progress(
            steps_per_epoch, f"[{args.model}] epoch {epoch}/{args.epochs}", main, args.log_every
        )
        sums: dict[str, torch.Tensor] = {}
        n_images, steps = 0, 0
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb = task.prepare(xb.to(device, non_blocking=True))
            yb = yb.to(device, non_blocking=True)
            losses = task.step(xb, yb if task.uses_labels else None)
            steps += 1
            global_step += 1
            n_images += len(xb)
            for k, v in losses.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            if len(step_losses) < STEP_LOSSES_KEPT:
                step_losses.append(
                    {"step": global_step, **{k: v.item() for k, v in losses.items()}}
                )
            progress.update(
                steps,
                n_images * info.world_size,
                lambda s=steps: {k: (v / s).item() for k, v in sums.items()},
            )
            if steps >= steps_per_epoch:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        means = distributed.all_reduce_mean(
            {k: (v / max(steps, 1)).item() for k, v in sums.items()}, info, device
        )
        record = {
            "epoch": epoch,
            "steps": steps,
            "images": n_images * info.world_size,
            "seconds": seconds,
            "images_per_s": n_images * info.world_size / max(seconds, 1e-9),
            **means,
            **task.evaluate(val),
        }
        history.append(record)
        rng = _gather_rng(loader_gen, info)
        if main:
            sample = task.write_samples(os.path.join(args.out, f"samples_epoch{epoch}.png"))
            wrote_samples = wrote_samples or bool(sample)
            path = checkpoint.save(
                args.out,
                epoch,
                {
                    "model": args.model,
                    "impl": args.impl,
                    "epoch": epoch,
                    "step": global_step,
                    "task": task.state(),
                    "rng": rng,
                    "metrics": history,
                    "args": {k: v for k, v in vars(args).items() if k != "func"},
                },
            )
            shown = {
                k: v
                for k, v in record.items()
                if k not in ("epoch", "steps", "images", "seconds", "images_per_s")
            }
            progress.close(
                f"[{args.model}] epoch {epoch}/{args.epochs} {steps} steps "
                f"{format_losses(shown)} {record['images_per_s']:.1f} img/s {seconds:.1f} s"
                f" -> {os.path.basename(path)}"
                + (f", {os.path.basename(sample)}" if sample else "")
            )
            _write_json(
                _metrics(args, device, info, desc, history, step_losses),
                os.path.join(args.out, "metrics.json"),
            )
        distributed.barrier(info)
    total = time.perf_counter() - run_start
    if args.debug_save_all_ranks:
        checkpoint.atomic_save(
            {k: m.state_dict() for k, m in task.models.items()},
            os.path.join(args.out, f"final_rank{info.rank}.pt"),
        )
    # every process done before any leaves the group: one destroying its group while another
    # still saved closed gloo's connections under that one, whose pair thread then aborted it at
    # exit ("terminate called without an active exception", SIGABRT; once in CI's two-process
    # test). Only on success: a process that failed must not wait for the others here.
    distributed.barrier(info)
    last = history[-1]
    shown = {
        k: v
        for k, v in last.items()
        if k not in ("epoch", "steps", "images", "seconds", "images_per_s")
    }
    say(
        f"done: {args.model} ({args.impl}) epochs {start_epoch}-{args.epochs} in {total:.1f} s, "
        f"last epoch {format_losses(shown)}, {last['images_per_s']:.1f} img/s; "
        f"checkpoints, {'samples and ' if wrote_samples else ''}metrics.json in {args.out}"
    )
    return 0


def _metrics(args, device, info, desc, history, step_losses) -> dict:
    return {
        "model": args.model,
        "impl": args.impl,
        "device": str(device),
        "world_size": info.world_size,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "amp": args.amp_dtype if args.amp else None,
        "compile": args.compile,
        "data": desc,
        "epochs": history,
        "step_losses": step_losses,
    }
