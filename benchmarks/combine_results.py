"""Combines the results.json of several `genkern bench --filter FAMILY --out DIR` runs (one run
per op family keeps each family's machine peaks measured right beside it) into one results file:

    python benchmarks/combine_results.py OUT_STEM DIR1 DIR2 ...

writes OUT_STEM.json (every run, whole), OUT_STEM.md (each run's table) and the plots.
"""

import json
import os
import sys

from genkern.bench import plots, report


def main(stem: str, dirs: list[str]) -> None:
    runs = [json.load(open(os.path.join(d, "results.json"))) for d in dirs]
    with open(stem + ".json", "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(report.markdown(run) for run in runs))
    rows = [row for run in runs for row in report.summarize(run)]
    out_dir, name = os.path.split(stem)
    for path in plots.write(rows, out_dir or ".", name):
        print(f"wrote {path}")
    print(f"wrote {stem}.json, {stem}.md")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
