"""`genkern info | check | bench | train` (console script `genkern`, also `python -m genkern`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from genkern import _args

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cpu_kernels(c) -> str:
    """Which of genkern's CPU kernel builds run here, and how the auto rules read ATen's GEMM
    (MKL) against oneDNN on this CPU."""
    isa = (
        "AVX-512"
        if c.avx512_kernels_enabled()
        else "AVX2"
        if c.avx2_kernels_enabled()
        else "baseline (no AVX2)"
    )
    if c.blas_as_wide_as_onednn():
        gemm = "ATen's GEMM runs vectors as wide as oneDNN's"
    else:
        gemm = (
            "ATen's GEMM (MKL) runs narrower vectors than oneDNN's here: the Winograd and "
            "conv-GEMM paths stay off in auto, the dense layers' products run on oneDNN's matmul"
        )
    return f"{isa}; {gemm}"


def _auto_line(device) -> str:
    """What "auto" resolves to on this device, under GENKERN_BACKEND when it is set."""
    from genkern import backends

    auto = backends.auto_backend(device)
    env = os.environ.get("GENKERN_BACKEND", "").strip()
    if not env:
        return auto
    name = backends.requested_backend()  # valid: main() checked it
    if name == "auto":
        return f"{auto} (GENKERN_BACKEND={env})"
    if backends.unavailable_reason(name, device, torch.float32) is None:
        return f"{name} (GENKERN_BACKEND={env}; without it: {auto})"
    return f"none: GENKERN_BACKEND={env} cannot run here, calls raise (without it: {auto})"


def _env_backend_note(command: str, what: str) -> None:
    """check and bench run each backend by name: a GENKERN_BACKEND given changes nothing."""
    env = os.environ.get("GENKERN_BACKEND", "").strip()
    if env and env != "auto":
        print(
            f"genkern {command}: note: GENKERN_BACKEND={env} is not used: {what}", file=sys.stderr
        )


def cmd_info(args) -> int:
    import genkern
    from genkern import _ext, backends

    lines = [f"genkern {genkern.__version__}", f"torch {torch.__version__}"]
    err = backends.triton_import_error()
    if err is None:
        import triton

        interp = " (TRITON_INTERPRET=1: interpreter)" if backends.triton_interpreter() else ""
        lines.append(f"triton {triton.__version__}{interp}")
    else:
        lines.append(f"triton: not available ({err})")
    lines.append(
        "C++ extension genkern._C: "
        + ("built" if _ext.HAS_CPU else f"not built ({_ext.LOAD_ERROR})")
    )
    if _ext.HAS_CPU:
        lines.append("CPU kernels: " + _cpu_kernels(_ext._C))
    lines.append("CUDA kernels in genkern._C: " + ("built" if _ext.HAS_CUDA else "not built"))
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    lines.append("backends (float32):")
    for dev in devices:
        d = torch.device(dev)
        name = (
            torch.cuda.get_device_name(d)
            if d.type == "cuda"
            else f"{torch.get_num_threads()} threads"
        )
        lines.append(f"  {dev} ({name}):")
        for b in backends.BACKENDS:
            reason = backends.unavailable_reason(b, d, torch.float32)
            lines.append(f"    {b:<7} " + ("yes" if reason is None else f"no: {reason}"))
        lines.append(f"    auto -> {_auto_line(d)}")
    print("\n".join(lines))
    return 0


def cmd_check(args) -> int:
    from genkern import check

    _env_backend_note("check", "it runs every backend available here by name")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = args.ops.split(",") if args.ops else None
    known = {case.op for case in check.CASES}
    unknown = sorted(set(ops or ()) - known)
    if unknown:
        names = ", ".join(sorted(known))
        print(f"genkern check: unknown op(s) {', '.join(unknown)}; known: {names}", file=sys.stderr)
        return 2
    rows = check.run(device, ops=ops)
    print(f"genkern check on {device}")
    print(check.table(rows))
    return 0 if rows and all(r["ok"] for r in rows) else 1


def cmd_bench(args) -> int:
    from genkern.bench import cases as bench_cases
    from genkern.bench import report, runner

    if args.compare:
        try:
            old, new = (_load_results(path) for path in args.compare)
            print(report.compare(old, new))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"genkern bench --compare: {e}", file=sys.stderr)
            return 2
        return 0
    _env_backend_note("bench", "it times each genkern backend available here by name")
    if args.out and (problem := _unwritable(args.out)):  # before the run, not after it
        print(f"genkern bench --out {args.out}: {problem}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    cases = bench_cases.select(quick=args.quick, filter=args.filter)
    # every term must match a case (found by a fuzz: a misspelt one among others went unsaid)
    terms = [t for t in (args.filter or "").split(",") if t]
    unmatched = [t for t in terms if not bench_cases.select(quick=args.quick, filter=t)]
    if not cases or unmatched:
        which = ", ".join(repr(t) for t in unmatched) or repr(args.filter)
        print(f"genkern bench: no case matches --filter {which}", file=sys.stderr)
        return 2
    if skipped := runner.skipped_backends(device, dtype):
        why = "; ".join(f"{b}: {reason}" for b, reason in skipped.items())
        ours = [p for p in runner.providers_for(device, dtype) if p.startswith("genkern:")]
        if not ours:  # stock PyTorch against itself: nothing to measure
            print(
                f"genkern bench: no genkern backend runs {args.dtype} on {device} here ({why})",
                file=sys.stderr,
            )
            return 2
        print(
            f"genkern bench: note: genkern backends not timed on {device}: {why}", file=sys.stderr
        )
    data = runner.run(
        cases,
        device,
        dtype,
        quick=args.quick,
        compile=not args.no_compile,
        progress=not args.no_progress,
    )
    print(report.markdown(data))
    if args.out:
        for path in report.write(data, args.out):
            print(f"wrote {path}")
    bad = [
        r for r in data["results"] if r["status"] != "ok" and r["provider"].startswith("genkern")
    ]
    return 1 if bad else 0


RESULT_KEYS = ("case", "mode", "provider", "status", "median_ms")  # what --compare reads


def _load_results(path: str) -> dict:
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as e:  # json.JSONDecodeError, or bytes that are not text
            raise ValueError(f"{path} is not JSON ({e})") from None
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError(f"{path} is not a genkern bench results.json (no 'results')")
    problem, env = None, data.get("environment")
    if (
        not isinstance(env, dict)
        or "commit" not in env
        or "date" not in env
        or "device" not in data
    ):
        problem = "no 'environment' with 'commit' and 'date', or no 'device'"
    elif not isinstance(data["results"], list):
        problem = "'results' is not a list"
    else:
        for r in data["results"]:
            missing = [k for k in RESULT_KEYS if not isinstance(r, dict) or k not in r]
            if missing:
                problem = f"a result without {', '.join(repr(k) for k in missing)}"
                break
            ms = r["median_ms"]
            if r["status"] == "ok" and not (isinstance(ms, (int, float)) and ms > 0):
                problem = f"an ok result whose median_ms is {ms!r}"
                break
    if problem:
        raise ValueError(f"{path} is not a genkern bench results.json ({problem})")
    return data


def _unwritable(out: str) -> str | None:
    """Why results could not be written under `out`, or None."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".genkern-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genkern", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, extensions built, backends per device")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("check", help="every op and backend here against the float64 reference")
    p.add_argument(
        "--device", type=_args.device, help="cpu or cuda (default: cuda if available, else cpu)"
    )
    p.add_argument("--ops", type=_args.name_list, help="comma-separated op names (default: all)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser(
        "bench",
        help="benchmark genkern against stock PyTorch",
        description="Time every case for stock PyTorch and each genkern backend that runs on "
        "the device. Exit status 1 when a genkern result is wrong or fails, 2 for a usage error "
        "or when no genkern backend runs on the device (the cpu backend needs the compiled "
        "extension genkern._C: a pure-Python install has nothing to time on a CPU).",
    )
    p.add_argument(
        "--device", type=_args.device, help="cpu or cuda (default: cuda if available, else cpu)"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--quick", action="store_true", help="a short subset (minutes on a CPU)")
    p.add_argument(
        "--filter",
        type=_args.name_list,
        help="comma-separated op families or case-name substrings (default: every case)",
    )
    p.add_argument("--out", help="directory for results.json and results.md")
    p.add_argument("--threads", type=_args.positive_int, help="CPU threads (default: torch's)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("OLD.json", "NEW.json"),
        help="print the change between two runs' results.json and exit",
    )
    p.set_defaults(func=cmd_bench)
    from genkern import train

    train.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from genkern import backends

    try:
        backends.requested_backend()  # GENKERN_BACKEND names a backend (or is unset)
    except ValueError as exc:
        print(f"genkern {args.command}: {exc}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
