"""`genkern train`: every model family for a few steps on the bundled digits (checkpoints, --resume,
sample grids, metrics.json), --data (.npz, image folder, bad paths), seeds, --impl torch vs genkern,
--amp, DDP under torchrun (2 CPU processes), the CLI; and a slow DCGAN quality check."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from genkern import cli

pytest.importorskip("sklearn")
Image = pytest.importorskip("PIL.Image")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny builds and runs: the whole module takes well under a minute on 2 cores
TINY = {
    "dcgan": ["--width", "8", "--nz", "16"],
    "vae": ["--latent-dim", "4"],
    "ae": [],
    "cnn": ["--limit", "300"],  # a 30-image held-out split
}


def train(model, out, *extra, steps=2, batch=4, epochs=1, check=True):
    argv = ["train", model, "--out", str(out), "--device", "cpu", "--epochs", str(epochs)]
    argv += ["--batch-size", str(batch), "--max-steps", str(steps), *TINY[model], *extra]
    rc = cli.main(argv)
    if check:
        assert rc == 0
    return rc


def params(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt, {f"{m}.{k}": v for m, sd in ckpt["task"]["models"].items() for k, v in sd.items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("model", ["dcgan", "vae", "ae", "cnn"])
def test_train_checkpoints_samples_metrics_and_resume(model, tmp_path, capsys):
    out = tmp_path / "run"
    train(model, out, steps=1)
    for name in ("checkpoint_epoch1.pt", "latest.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    assert metrics["epochs"][0]["steps"] == 1 and metrics["epochs"][0]["images_per_s"] > 0
    if model == "cnn":
        assert 0 <= metrics["epochs"][0]["val_acc"] <= 1
        out_text = capsys.readouterr().out
        assert "val_acc" in out_text
        # found by a fuzz: the summary claimed samples, which cnn does not write
        assert not [p for p in os.listdir(out) if p.startswith("samples")]
        assert f"checkpoints, metrics.json in {out}" in out_text
    else:
        assert f"checkpoints, samples and metrics.json in {out}" in capsys.readouterr().out
        png = np.asarray(Image.open(out / "samples_epoch1.png"), dtype=np.float32)
        assert png.std() > 0
    ckpt1, p1 = params(out / "checkpoint_epoch1.pt")
    assert ckpt1["epoch"] == 1 and ckpt1["step"] == 1

    # --resume continues at epoch 2 from the saved state: the same parameters as one 2-epoch run
    train(model, out, "--resume", epochs=2, steps=1)
    ckpt2, p2 = params(out / "latest.pt")
    assert ckpt2["epoch"] == 2 and ckpt2["step"] == 2 and (out / "checkpoint_epoch2.pt").is_file()
    assert [e["epoch"] for e in ckpt2["metrics"]] == [1, 2]
    assert any(not torch.equal(p1[k], p2[k]) for k in p1)  # it trained on
    straight = tmp_path / "straight"
    train(model, straight, epochs=2, steps=1)
    assert_same(params(straight / "latest.pt")[1], p2)
    # nothing left to do
    train(model, out, "--resume", epochs=2, steps=1)
    assert "nothing to do" in capsys.readouterr().out


def test_same_seed_same_parameters_other_seed_other(tmp_path):
    train("cnn", tmp_path / "a", "--seed", "3")
    train("cnn", tmp_path / "b", "--seed", "3")
    train("cnn", tmp_path / "c", "--seed", "4")
    a, b, c = (params(tmp_path / d / "latest.pt")[1] for d in "abc")
    assert_same(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("model", ["dcgan", "vae", "ae", "cnn"])
def test_genkern_and_torch_impls_agree(model, tmp_path):
    for impl in ("genkern", "torch"):
        train(model, tmp_path / impl, "--impl", impl, steps=2)
    g, t = (json.loads((tmp_path / i / "metrics.json").read_text()) for i in ("genkern", "torch"))
    assert g["impl"] == "genkern" and t["impl"] == "torch"
    assert len(g["step_losses"]) == len(t["step_losses"]) == 2
    for sg, st in zip(g["step_losses"], t["step_losses"]):
        assert sg.keys() == st.keys()
        for k in sg:
            assert sg[k] == pytest.approx(st[k], rel=1e-3, abs=1e-4), (sg["step"], k)


def test_amp_bf16_on_cpu(tmp_path):
    train("dcgan", tmp_path, "--amp", steps=2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["amp"] == "bf16"
    values = [v for s in metrics["step_losses"] for v in s.values()]
    assert values and all(np.isfinite(values))


def test_amp_runs_the_genkern_layers_in_the_autocast_dtype():
    from genkern import models

    model = models.CNNClassifier(impl="genkern")
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
    )
    assert model(x).dtype == torch.float32  # untouched outside autocast


def test_missing_extras_give_the_install_hint(tmp_path, monkeypatch, capsys):
    hint = "genkern train needs scikit-learn and Pillow: pip install 'genkern[train]'"
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    assert train("cnn", tmp_path / "a", check=False) == 2
    assert hint in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "PIL", None)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    assert train("ae", tmp_path / "b", "--data", str(npz), check=False) == 2  # sample grids
    assert hint in capsys.readouterr().err
    train("cnn", tmp_path / "c", "--data", str(npz), steps=1)  # an .npz needs numpy only


def test_unusable_out_gives_one_line(tmp_path, capsys):
    # found by a fuzz: an --out that is a file, or under one, ended in a traceback (status 1)
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert train("ae", out, check=False) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"genkern train: --out {out}: ") and err.count("\n") == 1, err


def test_data_npz_and_folder(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "mnist.npz"
    x = (rng.random((24, 28, 28)) * 255).astype(np.uint8)
    np.savez(npz, x_train=x, y_train=np.arange(24) % 3)
    train("cnn", tmp_path / "cnn_npz", "--data", str(npz))
    ckpt, p = params(tmp_path / "cnn_npz" / "latest.pt")
    assert p["classifier.classifier.3.weight"].shape[0] == 3  # classes from the labels
    train("ae", tmp_path / "ae_npz", "--data", str(npz))
    assert (tmp_path / "ae_npz" / "samples_epoch1.png").is_file()

    folder = tmp_path / "images"
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            a = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
            Image.fromarray(a).save(folder / label / f"{i}.png")
    train("cnn", tmp_path / "cnn_dir", "--data", str(folder), batch=4)
    ckpt, p = params(tmp_path / "cnn_dir" / "latest.pt")
    assert p["classifier.classifier.3.weight"].shape[0] == 2
    train("dcgan", tmp_path / "gan_dir", "--data", str(folder), batch=4)  # RGB: nc=3
    _, p = params(tmp_path / "gan_dir" / "latest.pt")
    assert p["generator.main.9.weight"].shape[1] == 3


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_x = tmp_path / "no_x.npz"
    np.savez(no_x, images=np.zeros((2, 8, 8)))
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, x=np.zeros((4, 8, 8), np.uint8))
    cases = [
        (tmp_path / "missing.npz", "no such file or folder"),
        (empty, "the folder holds no images"),
        (no_x, "no 'x' or 'x_train' array in the .npz (it has: images)"),
        (unlabeled, "cnn needs labels"),
    ]
    for path, message in cases:
        assert train("cnn", tmp_path / "out", "--data", str(path), check=False) == 2
        assert message in capsys.readouterr().err
    assert train("cnn", tmp_path / "out", "--batch-size", "0", check=False) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    # found by a fuzz: --lr inf trained on (to nan losses)
    for lr in ("inf", "-inf", "nan", "0", "-1e-3"):
        assert train("cnn", tmp_path / "out", f"--lr={lr}", check=False) == 2
        assert "--lr must be a positive finite number, but got" in capsys.readouterr().err
    assert train("cnn", tmp_path / "none", "--resume", check=False) == 2
    assert "--resume: no checkpoint latest.pt in" in capsys.readouterr().err


def _one_line_error(capsys, *messages):
    err = capsys.readouterr().err
    assert err.startswith("genkern train: ") and err.count("\n") == 1, err
    for message in messages:
        assert message in err, err
    return err


def test_too_few_images_and_bad_labels_are_clear_errors(tmp_path, capsys):
    # found by a fuzz: an empty training or held-out split ended in max()'s RuntimeError, a
    # negative label in cross_entropy's IndexError
    one = tmp_path / "one.npz"
    np.savez(one, x=np.zeros((1, 8, 8), np.uint8), y=np.zeros(1, np.int64))
    assert train("cnn", tmp_path / "a", "--data", str(one), check=False) == 2
    _one_line_error(capsys, "leaves 1 to train on and 0 held out")
    assert train("cnn", tmp_path / "b", "--val-fraction", "0.9999", check=False) == 2
    _one_line_error(capsys, "leaves 0 to train on and 300 held out")
    negative = tmp_path / "negative.npz"
    np.savez(negative, x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 3 - 2)
    assert train("cnn", tmp_path / "c", "--data", str(negative), check=False) == 2
    _one_line_error(capsys, "labels must be class indices 0, 1, ..., num_classes - 1, but got -2")
    objects = tmp_path / "objects.npz"  # (np.load refuses object arrays: a traceback, round 19)
    np.savez(objects, x=np.array([None] * 20, dtype=object))
    assert train("ae", tmp_path / "d", "--data", str(objects), check=False) == 2
    _one_line_error(capsys, "array 'x': Object arrays cannot be loaded when allow_pickle=False")


def test_resume_from_another_models_sizes_or_a_corrupt_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    train("dcgan", out, steps=1)
    capsys.readouterr()
    for extra, differ in (
        (["--width", "16"], "--width 16 (the checkpoint's run: 8)"),
        (["--image-size", "64"], "--image-size 64 (the checkpoint's run: default)"),
    ):
        assert train("dcgan", out, "--resume", *extra, epochs=2, check=False) == 2
        _one_line_error(capsys, "holds a model of other sizes", differ)
    (out / "latest.pt").write_text("garbage\n")
    assert train("dcgan", out, "--resume", epochs=2, check=False) == 2
    _one_line_error(capsys, "latest.pt is not a readable checkpoint")
    torch.save({"a": 1}, out / "latest.pt")
    assert train("dcgan", out, "--resume", epochs=2, check=False) == 2
    _one_line_error(capsys, "latest.pt is not a genkern train checkpoint (no model,")


def test_genkern_backend_that_cannot_run_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENKERN_BACKEND", "bogus")
    assert train("cnn", tmp_path / "a", check=False) == 2
    _one_line_error(capsys, "GENKERN_BACKEND: backend must be one of", "but got 'bogus'")
    monkeypatch.setenv("GENKERN_BACKEND", "cuda")  # CUDA kernels never run on CPU tensors
    assert train("cnn", tmp_path / "b", check=False) == 2
    _one_line_error(capsys, "GENKERN_BACKEND: backend 'cuda' is not available", "on cpu")
    train("cnn", tmp_path / "c", "--impl", "torch")  # the stock build runs no genkern op
    monkeypatch.setenv("GENKERN_BACKEND", "torch")
    train("cnn", tmp_path / "d")


def test_resume_applies_a_given_lr_and_keeps_the_saved_one_otherwise(tmp_path, capsys):
    # found by a fuzz: the optimizer state loaded from the checkpoint silently replaced --lr
    out = tmp_path / "run"
    lrs = lambda: {
        g["lr"]
        for o in params(out / "latest.pt")[0]["task"]["optimizers"].values()
        for g in o["param_groups"]
    }
    train("dcgan", out, "--lr", "0.01", steps=1)
    assert lrs() == {0.01}
    train("dcgan", out, "--resume", "--lr", "0.05", epochs=2, steps=1)
    assert lrs() == {0.05}
    assert "--lr 0.05 replaces the checkpoint's learning rate 0.01" in capsys.readouterr().out
    train("dcgan", out, "--resume", epochs=3, steps=1)  # not given: the saved one
    assert lrs() == {0.05}
    assert "replaces" not in capsys.readouterr().out


def test_help_and_bad_model_name(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--epochs", "--resume", "--amp", "--compile", "--max-steps", "--impl"):
        assert option in text
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "gan"])
    assert e.value.code == 2
    assert "invalid choice: 'gan'" in capsys.readouterr().err


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_console_script_runs(tmp_path):
    exe = shutil.which("genkern")
    command = [exe] if exe else [sys.executable, "-m", "genkern"]
    argv = ["train", "ae", "--out", str(tmp_path), "--device", "cpu", "--epochs", "1"]
    argv += ["--batch-size", "4", "--max-steps", "1"]
    r = subprocess.run(command + argv, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "done: ae (genkern)" in r.stdout
    assert (tmp_path / "latest.pt").is_file()


@pytest.mark.parametrize("model", ["cnn", "dcgan"])
def test_ddp_two_processes_keep_identical_parameters(model, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    command += ["-m", "genkern", "train", model, "--device", "cpu", "--out", str(tmp_path)]
    command += ["--epochs", "1", "--batch-size", "8", "--max-steps", "3", *TINY[model]]
    command += ["--debug-save-all-ranks"]
    r = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "x2 (DDP)" in r.stdout and r.stdout.count(f"done: {model}") == 1  # rank 0 prints
    a, b = (torch.load(tmp_path / f"final_rank{i}.pt", weights_only=False) for i in (0, 1))
    ckpt, p = params(tmp_path / "latest.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["rng"]) == 2
    assert ckpt["metrics"][0]["images"] == 2 * 3 * 8  # both processes' batches
    for m in a:
        for k in a[m]:
            if "running_" in k or "num_batches" in k:
                continue  # BatchNorm statistics are per process (torch's DDP default)
            assert torch.equal(a[m][k], b[m][k]), (m, k)
            assert torch.equal(a[m][k], p[f"{m}.{k}"]), (m, k)


def _slow_selected(config) -> bool:
    return "slow" in (config.getoption("-m") or "")


@pytest.mark.slow
def test_dcgan_learns_digits(tmp_path, request):
    """A few epochs of DCGAN on the digits, judged without a discriminator: a classifier trained
    on the real digits (8x8) must be confident on most samples, over several classes."""
    if not _slow_selected(request.config):
        pytest.skip("slow: run with -m slow")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    epochs = int(os.environ.get("GENKERN_SLOW_EPOCHS", "20"))
    start = time.perf_counter()
    assert (
        cli.main(
            [
                "train",
                "dcgan",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
                "--epochs",
                str(epochs),
                "--batch-size",
                "32",
                "--width",
                "32",
                "--nz",
                "32",
            ]
        )
        == 0
    )
    seconds = time.perf_counter() - start
    digits = load_digits()
    clf = LogisticRegression(max_iter=2000).fit(digits.data / 16.0, digits.target)
    from genkern import models

    ckpt = torch.load(tmp_path / "latest.pt", weights_only=False)
    g = models.DCGANGenerator(nz=32, ngf=32, nc=1, image_size=32, impl="torch")
    g.load_state_dict(ckpt["task"]["models"]["generator"])
    g.eval()
    with torch.no_grad():
        fake = (g(torch.randn(500, 32, generator=torch.Generator().manual_seed(1))) + 1) / 2
    small = torch.nn.functional.adaptive_avg_pool2d(fake, 8).flatten(1).numpy()
    prob = clf.predict_proba(small * 1.0)
    confident = float((prob.max(1) >= 0.5).mean())
    classes = len(set(prob.argmax(1).tolist()))
    print(f"dcgan {epochs} epochs, {seconds:.0f} s: confident {confident:.2f}, classes {classes}")
    assert confident >= 0.6
    assert classes >= 5
