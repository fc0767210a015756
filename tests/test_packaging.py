"""The source distribution carries what building it and the README's commands need: setup.py
lists only the files it hands the compiler, so the headers, the CUDA sources, the tests and the
install script come from MANIFEST.in (an sdist without the headers failed to compile)."""

import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _source_files(top: str, suffixes: tuple) -> set:
    found = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(suffixes):
                found.add(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return found


def _sdist_members(out_dir) -> set:
    # GENKERN_BUILD_EXT=0: no extension listed, so no C++ source gets in through setup.py; the
    # egg-info goes to out_dir, not into the source tree.
    env = {**os.environ, "GENKERN_BUILD_EXT": "0"}
    cmd = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out_dir)]
    cmd += ["sdist", "-d", str(out_dir)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    (tarball,) = [p for p in os.listdir(out_dir) if p.endswith(".tar.gz")]
    with tarfile.open(os.path.join(out_dir, tarball)) as tar:
        names = tar.getnames()
    prefix = tarball[: -len(".tar.gz")] + "/"
    return {n[len(prefix) :] for n in names if n.startswith(prefix)}


def test_sdist_carries_the_sources_headers_tests_and_install_script(tmp_path):
    members = _sdist_members(tmp_path)
    wanted = _source_files("csrc", (".cpp", ".h", ".cu", ".cuh", ".sh"))
    wanted |= _source_files("genkern", (".py",))
    wanted |= _source_files("tests", (".py", ".md", ".sh"))
    wanted |= _source_files("benchmarks", (".py",))
    wanted |= {".ci/install", ".ci/run", "README.md", "pyproject.toml", "setup.py"}
    assert any(name.endswith(".h") for name in wanted)
    missing = sorted(wanted - members)
    assert not missing, f"the sdist lacks {len(missing)} files, e.g. {missing[:5]}"
    built = [n for n in members if n.endswith((".so", ".o", ".pyc"))]
    assert not built, f"the sdist carries build outputs: {built[:5]}"
    assert not any(n.startswith("benchmarks/results/") for n in members)
