"""Training data: scikit-learn's handwritten digits (bundled with the package, no download), or
the user's own --data: an .npz with an `x` / `x_train` array (optional `y` / `y_train` labels), or
a folder of images (labels from the subfolder names). Every source comes out as float images in
[0, 1], N x C x H x W at the model's size, and int64 labels."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

NEEDS_EXTRA = "genkern train needs scikit-learn and Pillow: pip install 'genkern[train]'"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """A --data path that cannot be used (missing, no array, empty folder, bad shape)."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(NEEDS_EXTRA) from e


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of N x C x H x W images in [0, 1] to size x size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise DataError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones")


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16) -> N x 1 x 8 x 8 in [0, 1]."""
    _require("sklearn")
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def _to_nchw(a: np.ndarray, path: str, key: str) -> torch.Tensor:
    if a.dtype.kind in "iub":
        scale = 1.0 if a.dtype.kind == "b" else float(max(np.iinfo(a.dtype).max, 1))
        x = torch.from_numpy(a.astype(np.float32) / scale)
    elif a.dtype.kind == "f":
        x = torch.from_numpy(a.astype(np.float32))
        if x.numel() and float(x.max()) > 1.0:  # 0..255 stored as floats
            x = x / 255.0
    else:
        raise DataError(f"{path}: array {key!r} has dtype {a.dtype}, expected numbers")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4:
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise DataError(
                f"{path}: array {key!r} of shape {tuple(a.shape)}: expected N x H x W, "
                "N x C x H x W or N x H x W x C images with 1 or 3 channels"
            )
    else:
        raise DataError(
            f"{path}: array {key!r} of shape {tuple(a.shape)}: expected N x H x W, "
            "N x C x H x W or N x H x W x C images"
        )
    if x.shape[0] == 0:
        raise DataError(f"{path}: array {key!r} holds no images")
    return x.clamp(0, 1).contiguous()


def load_npz(path: str):
    """(x, y or None, held-out (x, y) or None) from an .npz (e.g. the common mnist.npz)."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several kinds for a bad file
        raise DataError(f"--data {path}: not a readable .npz file ({e})") from e
    with data:
        keys = list(data.keys())
        key = next((k for k in ("x", "x_train") if k in data), None)
        if key is None:
            raise DataError(
                f"--data {path}: no 'x' or 'x_train' array in the .npz (it has: "
                f"{', '.join(keys) or 'nothing'})"
            )
        x = _to_nchw(_array(data, key, path), path, key)
        ykey = {"x": "y", "x_train": "y_train"}[key]
        y = _labels(_array(data, ykey, path), len(x), path, ykey) if ykey in data else None
        test = None
        if key == "x_train" and "x_test" in data and "y_test" in data:
            xt = _to_nchw(_array(data, "x_test", path), path, "x_test")
            test = (xt, _labels(_array(data, "y_test", path), len(xt), path, "y_test"))
    return x, y, test


def _array(data, key: str, path: str) -> np.ndarray:
    """data[key]; an object array, which allow_pickle=False refuses, as a DataError (found by a
    fuzz: a traceback)."""
    try:
        return data[key]
    except ValueError as e:
        raise DataError(f"--data {path}: array {key!r}: {e}") from e


def _labels(a: np.ndarray, n: int, path: str, key: str) -> torch.Tensor:
    a = np.asarray(a).reshape(-1)
    if len(a) != n or a.dtype.kind not in "iu":
        raise DataError(f"{path}: {key!r} must hold {n} integer labels, got {a.dtype} {a.shape}")
    return torch.from_numpy(a.astype(np.int64))


def load_folder(path: str, size: int):
    """Every image under `path`, resized to size x size with Pillow: grayscale (1 channel) when
    every image is, else RGB. A sample's label is its first-level subfolder (sorted names), or 0
    for images directly in `path`. Returns (x, y, class names)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(NEEDS_EXTRA) from e

    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files += [
            os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    if not files:
        raise DataError(
            f"--data {path}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    rels = [os.path.relpath(f, path).split(os.sep) for f in files]
    classes = sorted({r[0] for r in rels if len(r) > 1})
    index = {c: i for i, c in enumerate(classes)}
    loaded = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                loaded.append(im.copy())
        except OSError as e:
            raise DataError(f"--data {path}: cannot read image {f} ({e})") from e
    gray = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in loaded)
    mode = "L" if gray else "RGB"
    xs = []
    for im in loaded:
        a = np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR), dtype=np.float32)
        xs.append(a[None] / 255.0 if a.ndim == 2 else a.transpose(2, 0, 1) / 255.0)
    x = torch.from_numpy(np.stack(xs))
    y = torch.tensor([index[r[0]] if len(r) > 1 else 0 for r in rels], dtype=torch.int64)
    return x, y, classes


def load(data: str | None, size: int, limit: int | None = None):
    """(x, y or None, held-out (x, y) or None, description): x holds N x C x size x size images
    in [0, 1] with the source's channels (1 for the digits)."""
    test = None
    if data is None:
        x, y = load_digits()
        desc = "scikit-learn digits"
    elif not os.path.exists(data):
        raise DataError(f"--data {data}: no such file or folder")
    elif os.path.isdir(data):
        x, y, classes = load_folder(data, size)
        desc = f"{data} ({len(classes) or 1} classes)"
    elif data.endswith(".npz"):
        x, y, test = load_npz(data)
        desc = data
    else:
        raise DataError(f"--data {data}: expected an .npz file or a folder of images")
    if limit:
        x = x[:limit]
        y = None if y is None else y[:limit]
    x = resize(x, size)
    if test is not None:
        test = (resize(test[0], size), test[1])
    return x, y, test, desc


def split(x, y, fraction: float, seed: int):
    """A held-out split (the last `fraction` of a seeded permutation)."""
    n = len(x)
    n_val = max(1, int(round(n * fraction))) if n > 1 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, va = perm[: n - n_val], perm[n - n_val :]
    return (x[tr], y[tr]), (x[va], y[va])
