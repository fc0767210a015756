"""Runs benchmark cases: machine peaks measured in the same run, correctness checked before
timing, warm-up excluded, medians of many repetitions."""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from genkern import backends, testing
from genkern.bench.case import STOCK_PROVIDERS, Case, make_runner
from genkern.bench.memory import peak_memory_mb

# a provider's result may differ from stock eager by at most this (max_error scale) per dtype
CHECK_TOLERANCE = {
    torch.float32: 2e-3,
    torch.bfloat16: 6e-2,
    torch.float16: 1e-2,
    torch.float64: 1e-9,
}


@dataclass
class Result:
    case: str
    family: str
    mode: str
    shape: str
    provider: str
    status: str  # "ok" | "wrong" | "error"
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    reps: int = 0
    first_call_ms: float | None = None  # compile / autotune / first-use cost, excluded above
    max_error: float | None = None  # vs stock eager, max_error scale
    peak_mb: float | None = None  # memory allocated beyond the live inputs, forward+backward
    # the process's minor page faults per timed call, median (CPU): memory the allocator handed
    # back to the OS and takes again, ~1 us per 4 KB page on the reference machine
    faults_per_call: float | None = None
    flops: float = 0.0
    bytes: float = 0.0
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable, device: torch.device, min_reps: int, max_reps: int, budget_s: float
) -> list[float]:
    """Milliseconds per call, over at least min_reps and at most max_reps or budget_s."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - start < budget_s
    ):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _median_ms(fn, device: torch.device, quick: bool) -> float:
    for _ in range(2):
        fn()
    _sync(device)
    return statistics.median(time_callable(fn, device, 5, 50, 1.0 if quick else 3.0))


def measure_peaks(device: torch.device, quick: bool = False) -> dict:
    """The machine's fp32 matmul FLOP/s and copy bytes/s, measured now (medians). On the CPU the
    same n^3 product runs on both of torch's GEMM engines, ATen's mm (MKL) and oneDNN (as a 1x1
    conv over n pixels, channels_last), and the faster counts: MKL runs its AVX2 code on AMD's
    AVX-512 CPUs, where oneDNN's convs run twice its FLOP/s."""
    n = 1024 if (device.type == "cpu" and quick) else (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    engines = {"blas": _median_ms(lambda: torch.mm(a, b), device, quick)}
    if device.type == "cpu":
        pixels = a.view(1, 32, n // 32, n).permute(0, 3, 1, 2)  # NHWC: n pixels of n channels
        weight = b.t().contiguous().view(n, n, 1, 1)  # [C_out, C_in]: b transposed
        engines["onednn"] = _median_ms(
            lambda: torch.nn.functional.conv2d(pixels, weight), device, quick
        )
    t = min(engines.values())
    numel = (32 if device.type == "cpu" else 256) * 2**20
    src = torch.empty(numel, device=device).uniform_()
    dst = torch.empty_like(src)
    tc = _median_ms(lambda: dst.copy_(src), device, quick)
    return {
        "matmul_fp32_flops": 2.0 * n**3 / (t * 1e-3),
        "matmul_fp32_flops_by_engine": {k: 2.0 * n**3 / (v * 1e-3) for k, v in engines.items()},
        "matmul_size": n,
        "copy_bytes_per_s": 2.0 * numel * 4 / (tc * 1e-3),
        "copy_bytes": numel * 4,
    }


def providers_for(device: torch.device, dtype: torch.dtype, compile: bool = True) -> list[str]:
    stock = [p for p in STOCK_PROVIDERS if compile or p != "compile"]
    ours = [b for b in backends.available_backends(device, dtype) if b != "torch"]
    if device.type == "cpu":  # the Triton interpreter is a test vehicle, not a CPU backend
        ours = [b for b in ours if b != "triton"]
    return stock + [f"genkern:{b}" for b in ours]


def skipped_backends(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """genkern's backends for this device type (AUTO_ORDER's, but torch: the reference, never
    timed) that cannot run here and so are not providers, each with why."""
    skipped = {}
    for b in backends.AUTO_ORDER.get(device.type, ()):
        reason = None if b == "torch" else backends.unavailable_reason(b, device, dtype)
        if reason is not None:
            skipped[b] = reason
    return skipped


def _outputs(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, tuple) else [value]


def changed_by_channels_last(t) -> bool:
    """Whether the eager_cl provider's conversion changes t's memory order: a 4-D tensor not
    already channels_last (with one channel, or one pixel, a contiguous tensor is)."""
    return (
        isinstance(t, torch.Tensor)
        and t.dim() == 4
        and not t.is_contiguous(memory_format=torch.channels_last)
    )


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_once(fn: Callable, device: torch.device) -> tuple[float, int | None]:
    """One call's milliseconds, and on the CPU the minor page faults the process took meanwhile
    (read outside the timed span)."""
    before = _minor_faults() if device.type == "cpu" else None
    ms = time_callable(fn, device, 1, 1, 0.0)[0]
    after = _minor_faults() if before is not None else None
    return ms, (after - before if after is not None else None)


def _sign_flips(out: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Where out and expected lie on opposite sides of zero (a NaN in both is no flip)."""
    both_nan = torch.isnan(out) & torch.isnan(expected)
    return (torch.sign(out) != torch.sign(expected)) & ~both_nan


def _error_away_from_kinks(run, stock_run, out, expected, tolerance) -> tuple[float, int] | None:
    """A forward+backward case whose forward output matches stock eager's but whose gradients do
    not: where the two outputs lie on opposite sides of zero (a relu's kink, decided by the
    rounding of a pre-activation within an ulp or so of 0), the activation's mask differs and one
    flipped output moves a gradient by a whole product. Both are rerun with the output gradient
    zeroed at those outputs: the gradients' error away from the kinks, and how many there were.
    None where that does not apply: the forward differs, no sign differs, or no handle."""
    holder = getattr(run, "grad_output", None)
    stock_holder = getattr(stock_run, "grad_output", None)
    if holder is None or stock_holder is None or len(out) < 2 or "g" not in holder:
        return None
    if testing.max_error(out[0], expected[0]) > tolerance:
        return None
    flipped = _sign_flips(out[0].detach(), expected[0])
    kinks = int(flipped.sum())
    if kinks == 0:
        return None
    g = holder["g"]
    masked = g.masked_fill(flipped, 0)
    try:
        holder["g"], stock_holder["g"] = masked, masked
        ours, stock = _outputs(run()), _outputs(stock_run())
    finally:
        holder["g"], stock_holder["g"] = g, g
    return max(testing.max_error(o, e) for o, e in zip(ours[1:], stock[1:])), kinks


def run_case(
    case: Case, device: torch.device, dtype: torch.dtype, providers: list[str], quick: bool = False
) -> list[Result]:
    """Checks every provider against stock eager, warms it up, then times all of them in
    interleaved rounds (one call of each provider per round, the order rotating from round to
    round), so drifts of the machine and the aftermath of the previous call hit every provider
    alike and the ratios compare like with like."""
    inputs = case.make_inputs(device, dtype)
    if case.runner is None and not any(changed_by_channels_last(t) for t in inputs):
        # eager_cl would be the eager call again, and a duplicate biases the interleaved rounds:
        # stock eager timed right after the same code measured ~10% faster (2-core Xeon, sub-0.1
        # ms cases: cifar-fc3 forward+backward 58 vs 68 us, G-bce-4096 55 vs 62), genkern never
        providers = [p for p in providers if p != "eager_cl"]
    meta = dict(
        case=case.name,
        family=case.family,
        mode=case.mode,
        shape=case.shape,
        flops=case.flops_on(device, dtype),
        bytes=case.bytes,
    )
    results: dict[str, Result] = {}
    runners: dict[str, Callable] = {}
    first: dict[str, float] = {}
    warm: dict[str, float] = {}  # the second call's time
    expected = None
    for provider in providers:
        try:
            run = make_runner(case, provider, device, dtype, inputs)
            _sync(device)
            t0 = time.perf_counter()
            out = _outputs(run())
            _sync(device)
            first[provider] = (time.perf_counter() - t0) * 1e3
            if expected is None:  # eager runs first: the yardstick
                expected = [o.detach().clone() for o in out]
            err = max(testing.max_error(o, e) for o, e in zip(out, expected))
            tolerance, kinks = CHECK_TOLERANCE.get(dtype, 1e-2), 0
            if err > tolerance and provider != providers[0]:
                away = _error_away_from_kinks(
                    run, runners.get(providers[0]), out, expected, tolerance
                )
                if away is not None:
                    err, kinks = away
            if err > tolerance:
                results[provider] = Result(
                    **meta,
                    provider=provider,
                    status="wrong",
                    max_error=err,
                    message=f"differs from stock eager by {err:.3g}",
                )
                continue
            t0 = time.perf_counter()
            run()  # a second warm-up call (caches, allocator)
            _sync(device)
            warm[provider] = (time.perf_counter() - t0) * 1e3
            runners[provider] = run
            results[provider] = Result(
                **meta, provider=provider, status="ok", max_error=err, first_call_ms=first[provider]
            )
            if kinks:
                results[provider].message = (
                    f"gradients compared with the output gradient zeroed at {kinks} outputs whose "
                    "sign differs from stock eager's (an activation's kink: rounding decides it)"
                )
        except Exception as exc:  # a broken provider is reported, the run goes on
            results[provider] = Result(
                **meta,
                provider=provider,
                status="error",
                message=f"{type(exc).__name__}: {exc}"[:300],
            )
    min_rounds, max_rounds, budget = (
        (3, 20, 0.5 * len(runners)) if quick else (10, 200, 2.0 * len(runners))
    )
    # by the warm calls' times (a first call may be torch.compile's compilation)
    slowest = max((warm[p] for p in runners), default=0.0)
    if sum(warm[p] for p in runners) > 5000:  # rounds of over 5 s: fewer of them
        min_rounds = max(3, min_rounds // 2)
    elif slowest < 1 and not quick:
        max_rounds = 1000  # sub-millisecond calls: medians swung by 10-15% between runs at 200
    times: dict[str, list[float]] = {p: [] for p in runners}
    faults: dict[str, list[int]] = {p: [] for p in runners}
    shuffle = random.Random(0)
    start = time.perf_counter()
    rounds = 0
    while (
        runners
        and rounds < max_rounds
        and (rounds < min_rounds or time.perf_counter() - start < budget)
    ):
        # each round in a fresh order (seeded): every provider follows each other about equally
        # often. (A rotation keeps the neighbours fixed: stock eager always came right after
        # genkern and measured 10-15% slower than the identical eager channels_last call after
        # it on sub-millisecond cases; the one after torch.compile 5-7% slower. A call's
        # aftermath is not the next one's cost.)
        order = shuffle.sample(list(runners), len(runners))
        for provider in order:
            try:
                ms, n_faults = _time_once(runners[provider], device)
                times[provider].append(ms)
                if n_faults is not None:
                    faults[provider].append(n_faults)
            except Exception as exc:
                r = results[provider]
                r.status, r.message = "error", f"{type(exc).__name__}: {exc}"[:300]
                del runners[provider]
        rounds += 1
    for provider, run in runners.items():
        t = times[provider]
        q = statistics.quantiles(t, n=10) if len(t) >= 2 else [t[0]] * 9
        r = results[provider]
        r.median_ms, r.p10_ms, r.p90_ms, r.reps = statistics.median(t), q[0], q[-1], len(t)
        if faults[provider]:
            r.faults_per_call = statistics.median(faults[provider])
        if case.mode != "forward":
            r.peak_mb = peak_memory_mb(run, device)
    return [results[p] for p in providers if p in results]


def run(
    cases: list[Case],
    device: torch.device,
    dtype: torch.dtype,
    quick: bool = False,
    compile: bool = True,
    progress: bool = True,
) -> dict:
    """Runs every case; returns a JSON-ready dict with the machine, the peaks and every result."""
    from genkern.bench.environment import describe

    providers = providers_for(device, dtype, compile)
    env = describe(device)
    peaks = measure_peaks(device, quick)
    results: list[Result] = []
    for i, case in enumerate(cases):
        if progress:
            bar = "#" * int(30 * i / max(1, len(cases)))
            print(
                f"\r[{bar:<30}] {i}/{len(cases)} {case.name} {case.mode:<18}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        results.extend(run_case(case, device, dtype, providers, quick))
    if progress:
        print(f"\r[{'#' * 30}] {len(cases)}/{len(cases)} done{' ' * 40}", file=sys.stderr)
    return {
        "environment": env,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "quick": quick,
        "providers": providers,
        "peaks": peaks,
        "results": [r.to_dict() for r in results],
    }
