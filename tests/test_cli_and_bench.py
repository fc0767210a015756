"""`genkern info | check | bench`, the benchmark runner, the report writer and --compare, on tiny
cases."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from genkern import cli
from genkern.bench import report, runner
from genkern.bench.case import Case, make_runner


def _tiny_case(genkern_fn, mode="forward+backward"):
    def make_inputs(device, dtype):
        return [torch.randn(8, 4, device=device, dtype=dtype, requires_grad=mode != "forward")]

    return Case(
        name="tiny/relu",
        family="tiny",
        shape="8x4",
        mode=mode,
        make_inputs=make_inputs,
        stock=torch.relu,
        genkern=genkern_fn,
        bytes=2 * 32 * 4,
    )


def _run(case, providers):
    return runner.run_case(case, torch.device("cpu"), torch.float32, providers, quick=True)


def test_runner_times_a_correct_provider():
    case = _tiny_case(lambda x, backend: torch.relu(x))
    results = _run(case, ["eager", "genkern:cpu"])
    assert [r.status for r in results] == ["ok", "ok"]
    assert all(r.median_ms > 0 and r.reps >= 3 for r in results)
    assert results[1].peak_mb is not None


def test_runner_leaves_out_eager_cl_where_it_is_eager_again():
    """eager_cl converts 4-D tensors of several channels and pixels only; elsewhere it would time
    the eager call twice (a duplicate that biases the interleaved rounds) and is left out."""
    case = _tiny_case(lambda x, backend: torch.relu(x))
    results = _run(case, ["eager", "eager_cl", "genkern:cpu"])
    assert [r.provider for r in results] == ["eager", "genkern:cpu"]
    assert not runner.changed_by_channels_last(torch.randn(64, 1, 8, 8))
    assert not runner.changed_by_channels_last(torch.randn(2, 3, 1, 1))
    assert runner.changed_by_channels_last(torch.randn(2, 3, 4, 4))
    cl = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert not runner.changed_by_channels_last(cl)


def _shared_stock(x):  # one code object for several cases, as reference.conv_transpose2d is
    return torch.relu(x) * 2


def test_each_compile_provider_compiles_afresh():
    """Past dynamo's recompile limit per code object a compiled call runs eagerly with only a
    warning, and cases share stock functions: each compile provider starts from an empty dynamo
    cache, so its first call compiles a graph instead of hitting an earlier case's."""
    from torch._dynamo.utils import counters

    case = _tiny_case(lambda x, backend: x, mode="forward")
    case.stock = _shared_stock
    inputs = case.make_inputs(torch.device("cpu"), torch.float32)
    new_graphs = []
    for _ in range(2):
        before = counters["stats"]["unique_graphs"]
        make_runner(case, "compile", torch.device("cpu"), torch.float32, inputs)()
        new_graphs.append(counters["stats"]["unique_graphs"] - before)
    assert new_graphs == [1, 1]


def test_runner_reports_wrong_and_broken_providers():
    wrong = _run(_tiny_case(lambda x, backend: torch.relu(x) + 1), ["eager", "genkern:cpu"])[1]
    assert wrong.status == "wrong" and wrong.median_ms is None
    assert "differs from stock eager" in wrong.message

    def boom(x, backend):
        raise RuntimeError("kernel exploded")

    broken = _run(_tiny_case(boom), ["eager", "genkern:cpu"])[1]
    assert broken.status == "error" and "kernel exploded" in broken.message


def _kink_case(genkern_fn):
    """relu over inputs whose element 0 is -1e-7: a provider whose rounding lands it on the
    other side of the kink flips its mask there, a whole unit of gradient."""

    def make_inputs(device, dtype):
        x = torch.linspace(-1, 1, 32, device=device, dtype=dtype).reshape(8, 4)
        x[0, 0] = -1e-7
        return [x.requires_grad_()]

    case = _tiny_case(genkern_fn)
    case.make_inputs = make_inputs
    return case


def test_runner_compares_gradients_away_from_an_activations_kink():
    # the forward within float32 rounding of stock's, one output across relu's kink: the check
    # zeroes the output gradient there for both and compares the rest
    flips_one = _kink_case(lambda x, backend: torch.relu(x + 2e-7))
    ok = _run(flips_one, ["eager", "genkern:cpu"])[1]
    assert ok.status == "ok" and ok.max_error < 1e-6
    assert "zeroed at 1 outputs whose sign differs" in ok.message
    # the same flip with a wrong gradient elsewhere is still wrong
    wrong_grad = _kink_case(lambda x, backend: torch.relu(x + 2e-7) + 0.1 * (x - x.detach()))
    wrong = _run(wrong_grad, ["eager", "genkern:cpu"])[1]
    assert wrong.status == "wrong" and "differs from stock eager" in wrong.message
    # a forward that differs is wrong whatever the signs
    off = _run(_kink_case(lambda x, backend: torch.relu(x) * 1.01), ["eager", "genkern:cpu"])[1]
    assert off.status == "wrong"


def test_sign_flips_skip_nans_in_both():
    nan = float("nan")
    out = torch.tensor([1.0, -1.0, nan, nan, 0.0, 2.0])
    expected = torch.tensor([1.0, 1.0, nan, 3.0, -0.0, -2.0])
    flips = runner._sign_flips(out, expected)
    assert flips.tolist() == [False, True, False, True, False, True]


def _data(results, commit="abc"):
    return {
        "environment": {
            "commit": commit,
            "date": "2026-01-01",
            "threads": 2,
            "torch": "x",
            "cpu": "test cpu",
        },
        "device": "cpu",
        "dtype": "float32",
        "quick": True,
        "providers": ["eager", "genkern:cpu"],
        "peaks": {"matmul_fp32_flops": 1e10, "copy_bytes_per_s": 1e9},
        "results": [r.to_dict() for r in results],
    }


def test_report_and_compare(tmp_path):
    results = _run(_tiny_case(lambda x, backend: torch.relu(x)), ["eager", "genkern:cpu"])
    data = _data(results)
    md = report.markdown(data)
    assert "tiny/relu" in md and "x eager" in md and "% of peak" in md
    rows = report.summarize(data)
    assert rows[0]["best"] == "genkern:cpu" and rows[0]["speedup_vs_eager"] > 0
    paths = report.write(data, str(tmp_path))
    assert json.loads(open(paths[0]).read())["results"][0]["case"] == "tiny/relu"
    slower = json.loads(json.dumps(data))
    for r in slower["results"]:
        r["median_ms"] *= 2
    text = report.compare(data, slower)
    assert "2.00" in text and "geomean new/old time: 2.000" in text


def test_report_gives_percent_of_peak_for_float32_only():
    """Found by the fuzz: a bfloat16 run's "% of peak" divided by the float32 peaks (and its
    memory-bound cases count float32 bytes)."""
    results = _run(_tiny_case(lambda x, backend: torch.relu(x)), ["eager", "genkern:cpu"])
    assert report.summarize(_data(results))[0]["peak_fraction"] > 0
    assert "no % of peak" not in report.markdown(_data(results))
    bf16 = dict(_data(results), dtype="bfloat16")
    assert report.summarize(bf16)[0]["peak_fraction"] is None
    md = report.markdown(bf16)
    assert "no % of peak for bfloat16: the peaks are float32's" in md
    cells = lambda start: next(
        [c.strip() for c in line.split("|")[1:-1]]
        for line in md.splitlines()
        if line.startswith(start)
    )
    assert cells("| tiny/relu")[cells("| case").index("% of peak")] == "-"


def test_runner_counts_page_faults_per_call():
    """A provider that maps fresh memory each call (an mmap freed back to the OS on return, as
    glibc does for large blocks) shows its faults per call in the result and the report; one that
    touches memory it already holds shows none."""
    import mmap

    pages = 256

    def fresh_pages(x, backend):
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:
            for i in range(pages):
                m[i * mmap.PAGESIZE] = 1
        return torch.relu(x)

    case = _tiny_case(fresh_pages, mode="forward")
    eager, mapping = _run(case, ["eager", "genkern:cpu"])
    assert eager.faults_per_call < pages / 4
    assert mapping.faults_per_call >= pages
    md = report.markdown(_data([eager, mapping]))
    assert "minor page faults per call" in md
    assert f"genkern:cpu {mapping.faults_per_call:.0f}" in md


def test_cpu_peak_memory_counts_a_steps_release_of_the_last_steps_tensors():
    """A step that frees the last step's 1 MiB gradient, then allocates a 1 MiB temporary and a
    new gradient, peaks 1 MiB above what was live before it, also after a profiled session left
    stale sizes behind for addresses the allocator reuses (a single profiled call read 2 MiB, or
    less after such a session)."""
    from torch.profiler import ProfilerActivity, profile

    from genkern.bench.memory import peak_memory_mb

    n = 1 << 18  # float32: 1 MiB
    state = {"grad": torch.empty(n)}

    def step():
        state["grad"] = None
        tmp = torch.empty(n)
        state["grad"] = torch.empty(n)
        del tmp

    step()
    assert peak_memory_mb(step, torch.device("cpu")) == 1.0
    for _ in range(3):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
            blocks = [torch.empty(n) for _ in range(8)]
        del blocks  # freed outside any session: their sizes stay behind in the profiler
        step()
        assert peak_memory_mb(step, torch.device("cpu")) == 1.0


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_is_genkerns_own_never_that_of_a_repository_it_is_installed_in(tmp_path):
    """Found by the fuzz: a non-editable install inside another project's git repository (a
    virtual environment in it) recorded that project's commit as genkern's."""
    from genkern.bench.environment import _commit

    def git(*args):
        command = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run(command + list(args), capture_output=True, text=True, check=True)

    git("init", "-q")
    for package in (tmp_path / "venv" / "site-packages" / "genkern", tmp_path / "genkern"):
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
    git("add", "-A")
    git("commit", "-q", "-m", "a project")
    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    assert _commit(str(tmp_path / "venv" / "site-packages" / "genkern" / "__init__.py")) == (
        "unknown"
    )
    assert _commit(str(tmp_path / "genkern" / "__init__.py")) == head  # a genkern checkout
    assert _commit(str(tmp_path.parent / "elsewhere" / "genkern" / "__init__.py")) == "unknown"


def test_report_lists_problems():
    wrong = _run(_tiny_case(lambda x, backend: x * 0 + 5), ["eager", "genkern:cpu"])
    md = report.markdown(_data(wrong))
    assert "problems:" in md and "genkern:cpu: wrong" in md


def test_cli_info_runs():
    out = subprocess.run(
        [sys.executable, "-m", "genkern", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "genkern" in out and "backends" in out and "auto ->" in out
    from genkern import _ext

    if _ext.HAS_CPU:  # the CPU kernels' line states how ATen's GEMM compares with oneDNN's here
        wide = _ext._C.blas_as_wide_as_onednn()
        assert ("runs vectors as wide as oneDNN's" in out) == wide
        assert ("runs narrower vectors than oneDNN's" in out) == (not wide)


def test_cli_follows_genkern_backend(monkeypatch, capsys):
    """Found by the fuzz: info printed `auto -> cpu` under GENKERN_BACKEND=torch, and with a
    GENKERN_BACKEND that names no backend info and check exited 0 saying nothing."""
    from genkern import backends

    monkeypatch.setenv("GENKERN_BACKEND", "torch")
    assert cli.main(["info"]) == 0
    auto = backends.auto_backend("cpu")
    assert f"auto -> torch (GENKERN_BACKEND=torch; without it: {auto})" in capsys.readouterr().out
    monkeypatch.setenv("GENKERN_BACKEND", "cuda")  # never runs CPU tensors
    assert cli.main(["info"]) == 0
    assert "auto -> none: GENKERN_BACKEND=cuda cannot run here" in capsys.readouterr().out
    assert cli.main(["bench", "--filter", "no-such-case", "--no-progress"]) == 2
    assert "note: GENKERN_BACKEND=cuda is not used" in capsys.readouterr().err
    monkeypatch.setenv("GENKERN_BACKEND", "bogus")
    # (arguments that fail fast should the check be lost: a status 2 of their own, no run)
    for argv in (["info"], ["check", "--ops", "nosuchop"], ["bench", "--filter", "no-such"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"genkern {argv[0]}: GENKERN_BACKEND: backend must be one of")
        assert "but got 'bogus'" in err and err.count("\n") == 1, err


def test_cli_check_passes_on_this_machine(capsys):
    assert cli.main(["check", "--device", "cpu", "--ops", "conv2d"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_cli_bench_filter_without_match_fails(capsys):
    assert cli.main(["bench", "--filter", "no-such-case", "--no-progress"]) == 2


def test_bad_cpu_mode_variable_is_one_line_from_the_cli_and_valueerror_from_import():
    """Found by the fuzz: a bad GENKERN_CPU_* value ended every genkern command in the
    ValueError traceback of `import genkern`, which still raises it."""
    from _helpers import subprocess_env

    env = subprocess_env(GENKERN_CPU_PREPACK="bogus")
    message = "GENKERN_CPU_PREPACK must be auto, always or never, but got 'bogus'"
    exe = shutil.which("genkern")
    commands = [[sys.executable, "-m", "genkern"], [sys.executable, "-m", "genkern.cli"]]
    for command in commands + ([[exe]] if exe else []):
        r = subprocess.run(command + ["info"], env=env, capture_output=True, text=True)
        # (a pure-Python install also warns that genkern._C is missing)
        last = r.stderr.splitlines()[-1]
        assert r.returncode == 2 and last == f"genkern: error: {message}", r.stderr
        assert "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", "import genkern"], env=env, capture_output=True)
    assert r.returncode == 1 and f"ValueError: {message}" in r.stderr.decode()


def test_cli_bench_with_no_genkern_backend_to_time_says_so(monkeypatch, capsys):
    """Found by the fuzz: a pure-Python install (no genkern._C) on a CPU timed stock PyTorch
    against itself and exited 0 without a word: it now refuses, naming the backend and why."""
    from genkern import _ext

    monkeypatch.setattr(_ext, "HAS_CPU", False)
    monkeypatch.setattr(_ext, "LOAD_ERROR", "simulated: built with GENKERN_BUILD_EXT=0")

    def no_run(*args, **kwargs):
        raise AssertionError("ran the benchmark")

    monkeypatch.setattr(runner, "run", no_run)
    assert cli.main(["bench", "--device", "cpu", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genkern bench: no genkern backend runs float32 on cpu here (cpu: ")
    assert "GENKERN_BUILD_EXT=0" in err and err.count("\n") == 1, err
    assert runner.skipped_backends(torch.device("cpu"), torch.float32) == {
        "cpu": "the C++ extension genkern._C is not available (simulated: built with "
        "GENKERN_BUILD_EXT=0)"
    }


def test_pure_python_import_warns_once_and_works():
    code = (
        "import sys, warnings\n"
        "sys.modules['genkern._C'] = None\n"  # as if the extension had not been built
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import genkern, torch\n"
        "    import genkern.ops\n"
        "msgs = [str(x.message) for x in w if 'genkern._C' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "x, wt = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)\n"
        "y = genkern.ops.conv2d(x, wt, activation='relu')\n"
        "assert torch.allclose(y, torch.relu(torch.nn.functional.conv2d(x, wt)))\n"
        "try:\n"
        "    genkern.ops.conv2d(x, wt, backend='cpu')\n"
        "    raise SystemExit('no error')\n"
        "except RuntimeError as e:\n"
        "    assert 'not available (a pure-Python install' in str(e), e\n"
        "    assert \"Available here: 'torch'\" in str(e), e\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_model_cases_count_the_stock_models_matmul_flops():
    """A model case's FLOPs (its roofline against the matmul peak) are those of the convs and
    dense layers of one stock call: the CIFAR CNN at batch 1, counted by hand."""
    from genkern.bench.cases_models import CASES

    case = next(c for c in CASES if c.name == "model/cnn" and c.mode == "batch-1 inference")
    convs = [(3, 32, 32), (32, 64, 16), (64, 128, 8)]  # (C_in, C_out, side), 3x3 kernels
    expected = sum(2 * ci * co * 9 * side * side for ci, co, side in convs)
    expected += 2 * (128 * 4 * 4 * 256 + 256 * 10)
    assert case.flops == 0 and case.flops_on(torch.device("cpu"), torch.float32) == expected
    train = next(c for c in CASES if c.name == "model/cnn" and c.mode == "training step")
    # forward, plus each layer's weight gradient and every input gradient but the image's
    step = 128 * (3 * expected - 2 * 3 * 32 * 9 * 32 * 32)
    assert train.flops_on(torch.device("cpu"), torch.float32) == step


def test_cpu_peak_is_the_faster_gemm_engine():
    """The CPU's matmul peak is the faster of ATen's mm (MKL) and oneDNN (a 1x1 conv) on the same
    product, each engine's rate kept; the report names both."""
    peaks = runner.measure_peaks(torch.device("cpu"), quick=True)
    engines = peaks["matmul_fp32_flops_by_engine"]
    assert set(engines) == {"blas", "onednn"} and min(engines.values()) > 0
    assert peaks["matmul_fp32_flops"] == max(engines.values())
    data = dict(_data([]), peaks=peaks)
    assert "(the faster of ATen's mm " in report.markdown(data)
    del data["peaks"]["matmul_fp32_flops_by_engine"]  # results.json files from before it
    assert "the faster of" not in report.markdown(data)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "--threads", "-3"], "must be at least 1"),
        (["bench", "--threads", "0"], "must be at least 1"),
        (["bench", "--device", "nosuchdev"], "not a device"),
        (["check", "--device", "bogus"], "not a device"),
        (["train", "dcgan", "--device", "bogus"], "not a device"),
        (["check", "--ops", "nosuchop"], "unknown op"),
        # an empty list silently meant "all", an empty item made an empty unknown op's name
        (["check", "--ops="], "argument --ops: expected comma-separated names, but got ''"),
        (["check", "--ops", " , "], "argument --ops: expected comma-separated names"),
        (["check", "--ops", "conv2d,nosuchop,"], "unknown op(s) nosuchop; known:"),
        (["bench", "--filter="], "argument --filter: expected comma-separated names"),
        # one misspelt term among others was dropped without a word (fuzz round 19)
        (["bench", "--filter", "cifar-fc1,no_such_case"], "no case matches --filter 'no_such"),
        (["bench", "--compare", "/nonexistent/a.json", "/nonexistent/b.json"], "No such file"),
        (["bench", "--quick", "--filter", "losses", "--out", "/proc/nope"], "--out"),
    ]
    + (
        [(["bench", "--device", "cuda"], "CUDA is not available")]
        if not torch.cuda.is_available()
        else []
    ),
)
def test_cli_mistakes_get_one_line_and_status_2(argv, message, capsys, monkeypatch):
    # found by the fuzz of the CLI: each of these ended in a traceback (--out after the whole run)
    from genkern import check

    def no_run(*args, **kwargs):
        raise AssertionError("a mistake ran the check or the benchmark")

    monkeypatch.setattr(check, "run", no_run)
    monkeypatch.setattr(runner, "run", no_run)
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err, err


def test_cli_compare_refuses_what_is_not_a_results_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli.main(["bench", "--compare", str(bad), str(bad)]) == 2
    assert "not a genkern bench results.json" in capsys.readouterr().err
    # found by the fuzz: JSON errors and results without the fields compare reads (a KeyError:
    # `genkern bench --compare: 'status'`) did not name the file
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_data([])))
    for name, text, message in (
        ("broken.json", "{bad", "is not JSON (Expecting property name"),
        ("binary.json", b"\xff\xfe", "is not JSON ('utf-8' codec"),
        ("short.json", json.dumps(dict(_data([]), results=[{"case": "a"}])), "without 'mode'"),
        ("noenv.json", json.dumps({"results": []}), "no 'environment' with 'commit'"),
    ):
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        assert cli.main(["bench", "--compare", str(good), str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"genkern bench --compare: {path} ") and message in err, err
