"""Turns a run's results into tables (markdown/terminal) and files (results.json, results.md)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict


def _fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def summarize(data: dict) -> list[dict]:
    """One row per (case, mode): each provider's median, genkern's best, ratios, peak fraction."""
    by_case: dict[tuple, dict] = defaultdict(dict)
    meta = {}
    for r in data["results"]:
        key = (r["case"], r["mode"])
        by_case[key][r["provider"]] = r
        meta[key] = r
    rows = []
    # the peaks are float32's (matmul FLOP/s, copy bytes/s), and so are the cases' byte counts
    peaks = data.get("peaks", {}) if data.get("dtype", "float32") == "float32" else {}
    for key, provs in by_case.items():
        m = meta[key]
        row = {
            "case": key[0],
            "mode": key[1],
            "shape": m["shape"],
            "family": m["family"],
            "times": {},
            "peak_mb": {},
            "faults": {},
            "notes": [],
        }
        for p, r in provs.items():
            if r["status"] == "ok":
                row["times"][p] = r["median_ms"]
                row["peak_mb"][p] = r.get("peak_mb")
                row["faults"][p] = r.get("faults_per_call")
            else:
                row["times"][p] = None
                row["notes"].append(f"{p}: {r['status']} ({r['message']})")
        ours = {p: t for p, t in row["times"].items() if p.startswith("genkern:") and t}
        best = min(ours, key=ours.get) if ours else None
        row["best"] = best
        t_best = ours.get(best)
        eager, comp = row["times"].get("eager"), row["times"].get("compile")
        row["speedup_vs_eager"] = eager / t_best if eager and t_best else None
        row["speedup_vs_compile"] = comp / t_best if comp and t_best else None
        if t_best and m["flops"] and peaks.get("matmul_fp32_flops"):
            row["peak_fraction"] = m["flops"] / (t_best * 1e-3) / peaks["matmul_fp32_flops"]
        elif t_best and m["bytes"] and peaks.get("copy_bytes_per_s"):
            row["peak_fraction"] = m["bytes"] / (t_best * 1e-3) / peaks["copy_bytes_per_s"]
        else:
            row["peak_fraction"] = None
        rows.append(row)
    return rows


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _by_engine(peaks: dict) -> str:
    """Each GEMM engine's own rate, as " (the faster of ATen's mm 191 and oneDNN's 1x1 conv 412)"
    (GFLOP/s), where the peak was measured on both."""
    engines = peaks.get("matmul_fp32_flops_by_engine") or {}
    if len(engines) < 2:
        return ""
    names = {"blas": "ATen's mm", "onednn": "oneDNN's 1x1 conv"}
    rates = " and ".join(f"{names.get(k, k)} {v / 1e9:.0f}" for k, v in engines.items())
    return f" (the faster of {rates})"


def markdown(data: dict) -> str:
    rows = summarize(data)
    providers = data["providers"]
    env, peaks = data["environment"], data["peaks"]
    machine = env.get("gpu") or env.get("cpu")
    lines = [
        f"genkern bench on {data['device']} ({machine}), {data['dtype']}, "
        f"{env['threads']} threads, torch {env['torch']}, commit {env['commit']}, {env['date']}",
        f"measured peaks: fp32 matmul {peaks['matmul_fp32_flops'] / 1e9:.1f} GFLOP/s"
        f"{_by_engine(peaks)}, copy {peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s; times are "
        "medians in ms"
        + (
            ""
            if data["dtype"] == "float32"
            else f"; no % of peak for {data['dtype']}: the peaks are float32's"
        ),
        "",
        "| case | mode | shape | " + " | ".join(providers) + " | best | x eager | x compile | "
        "% of peak | MB eager | MB best |",
        "|" + "---|" * (len(providers) + 9),
    ]
    for r in rows:
        cells = [_fmt_ms(r["times"].get(p)) for p in providers]
        sp_e = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] else "-"
        sp_c = f"{r['speedup_vs_compile']:.2f}x" if r["speedup_vs_compile"] else "-"
        peak = f"{100 * r['peak_fraction']:.0f}%" if r["peak_fraction"] else "-"
        best = (r["best"] or "-").replace("genkern:", "")
        mem_e, mem_b = r["peak_mb"].get("eager"), r["peak_mb"].get(r["best"])
        mem = [f"{v:.1f}" if v is not None else "-" for v in (mem_e, mem_b)]
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['shape']} | "
            + " | ".join(cells)
            + f" | {best} | {sp_e} | {sp_c} | {peak} | {mem[0]} | {mem[1]} |"
        )
    g = geomean(r["speedup_vs_eager"] for r in rows)
    if g:
        lines += ["", f"geomean speedup of genkern's best over stock eager: {g:.2f}x"]
    firsts = [
        (r["case"], r["mode"], r["first_call_ms"])
        for r in data["results"]
        if r["provider"] == "compile" and r.get("first_call_ms")
    ]
    if firsts:
        lines += [
            "",
            "torch.compile first call (compilation; excluded from the medians): "
            + ", ".join(f"{c} {m} {t / 1e3:.1f} s" for c, m, t in firsts),
        ]
    faulting = [r for r in rows if max(filter(None, r["faults"].values()), default=0) >= 64]
    if faulting:
        lines += [
            "",
            "minor page faults per call (median, where a provider took 64 or more: memory the "
            "allocator gave back to the OS and maps again, each fault costing the call time):",
        ] + [
            f"- {r['case']} {r['mode']}: "
            + ", ".join(f"{p} {v:.0f}" for p, v in r["faults"].items() if v is not None)
            for r in faulting
        ]
    notes = [n for r in rows for n in r["notes"]]
    if notes:
        lines += ["", "problems:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(data: dict, out_dir: str, stem: str = "results") -> list[str]:
    """results.json (every number), results.md (the tables) and, with matplotlib, PNG plots."""
    from genkern.bench import plots

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")]
    with open(paths[0], "w") as f:
        json.dump(data, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(data))
    return paths + plots.write(summarize(data), out_dir, stem)


def compare(old: dict, new: dict) -> str:
    """The change of every (case, mode, provider) median between two runs, new over old."""
    key = lambda r: (r["case"], r["mode"], r["provider"])
    before = {key(r): r for r in old["results"] if r["status"] == "ok"}
    lines = [
        f"old: {old['environment']['commit']} {old['environment']['date']} "
        f"({old['device']}); new: {new['environment']['commit']} "
        f"{new['environment']['date']} ({new['device']})",
        "",
        "| case | mode | provider | old ms | new ms | new/old |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for r in new["results"]:
        o = before.get(key(r))
        if r["status"] != "ok" or o is None:
            continue
        ratio = r["median_ms"] / o["median_ms"]
        ratios.append(ratio)
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['provider']} | {_fmt_ms(o['median_ms'])} "
            f"| {_fmt_ms(r['median_ms'])} | {ratio:.2f} |"
        )
    g = geomean(ratios)
    if g:
        lines += ["", f"geomean new/old time: {g:.3f} ({len(ratios)} pairs; < 1 is faster)"]
    return "\n".join(lines) + "\n"
