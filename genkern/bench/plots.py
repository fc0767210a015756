"""PNG plots of a run (needs matplotlib, the `bench` extra): speedup per case grouped by op
family, and time per model case."""

from __future__ import annotations

import os


def write(rows: list[dict], out_dir: str, stem: str = "results") -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("genkern bench: matplotlib is not installed, no plots (pip install matplotlib)")
        return []
    paths = []
    families = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(len(families), 1, figsize=(10, 1.2 + 0.35 * len(rows)), squeeze=False)
    for ax, family in zip(axes[:, 0], families):
        sub = [r for r in rows if r["family"] == family]
        labels = [f"{r['case'].split('/', 1)[-1]} {r['mode']}" for r in sub]
        eager = [r["speedup_vs_eager"] or 0 for r in sub]
        comp = [r["speedup_vs_compile"] or 0 for r in sub]
        y = range(len(sub))
        ax.barh([i + 0.2 for i in y], eager, height=0.4, label="vs stock eager")
        ax.barh([i - 0.2 for i in y], comp, height=0.4, label="vs torch.compile")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.set_title(f"{family}: genkern speedup (x)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, f"{stem}-speedup.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    models = [r for r in rows if r["family"] == "model"]
    if models:
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(models)))
        providers = sorted({p for r in models for p in r["times"]})
        height = 0.8 / max(1, len(providers))
        for j, p in enumerate(providers):
            ax.barh(
                [i + j * height for i in range(len(models))],
                [r["times"].get(p) or 0 for r in models],
                height=height,
                label=p,
            )
        ax.set_yticks(
            [i + 0.4 for i in range(len(models))],
            [f"{r['case']} {r['mode']}" for r in models],
            fontsize=7,
        )
        ax.set_xscale("log")  # training steps and batch-1 calls differ by 1000x
        ax.set_xlabel("median ms (log scale)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, f"{stem}-models.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
