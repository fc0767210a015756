"""Builds genkern._C: the C++ CPU kernels always, the CUDA kernels when a CUDA toolkit and a CUDA
build of torch are present.

Environment:
  GENKERN_BUILD_EXT=0         pure-Python install (the "torch" and "triton" backends only)
  GENKERN_BUILD_CUDA=auto|0|1 build the CUDA sources: auto = when torch has CUDA and nvcc is found
  TORCH_CUDA_ARCH_LIST        CUDA architectures (default "8.0;9.0")
No step here needs a GPU.
"""

import glob
import os
import shutil
import subprocess
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in {"0", "1", "auto"}:
        raise SystemExit(f"{name} must be one of 0, 1, auto; got {value!r}")
    return value


def _rel(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _resolve_cuda_home() -> None:
    """Sets CUDA_HOME when `nvcc` on PATH is a wrapper script (e.g. /usr/local/bin/nvcc exec-ing
    /usr/local/cuda-13.0/bin/nvcc): torch would take dirname(dirname(which nvcc)), a directory
    without the CUDA headers (crt/host_defines.h) and libraries. nvcc's dry run names its real TOP.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.isfile(os.path.join(guess, "include", "cuda_runtime_api.h")):
        return
    try:
        dry = subprocess.run(
            [nvcc, "-dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ TOP="):
            top = os.path.normpath(line[len("#$ TOP=") :].strip())
            if os.path.isfile(os.path.join(top, "include", "cuda_runtime_api.h")):
                print(f"genkern: CUDA_HOME={top} (from {nvcc} -dryrun)")
                os.environ["CUDA_HOME"] = top
            return


def _cuda_wanted(torch, cpp_extension) -> bool:
    mode = _flag("GENKERN_BUILD_CUDA", "auto")
    if mode == "0":
        return False
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU build"
    elif cpp_extension.CUDA_HOME is None:
        reason = "no CUDA toolkit (nvcc) was found"
    if reason is None:
        return True
    if mode == "1":
        raise SystemExit(f"GENKERN_BUILD_CUDA=1 but {reason}")
    print(f"genkern: building without CUDA: {reason}")
    return False


def _extensions():
    if _flag("GENKERN_BUILD_EXT", "1") == "0":
        print("genkern: GENKERN_BUILD_EXT=0, pure-Python install")
        return [], {}
    import torch

    if _flag("GENKERN_BUILD_CUDA", "auto") != "0" and torch.version.cuda is not None:
        _resolve_cuda_home()  # before cpp_extension is imported: it reads CUDA_HOME on import
    from torch.utils import cpp_extension

    sources = ["csrc/bindings.cpp", *_rel("csrc/cpu/*.cpp")]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc/include")]
    # -fno-trapping-math: lets selects like leaky_relu vectorize; results are unchanged (only FP
    # exception flags, which nothing reads, could differ). -g0: Python's CFLAGS carry -g; the
    # debug info cost ~20% of the compile time and 80% of the object size, and nothing reads it.
    cxx = ["-O3", "-g0", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    extra_link = ["-fopenmp"]  # resolves to torch's own libgomp at run time: one OpenMP runtime
    library_dirs = []
    if _cuda_wanted(torch, cpp_extension):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += _rel("csrc/cuda/*.cu") + _rel("csrc/cuda/*.cpp")
        # CUDA library headers of pip-installed CUDA torch (cublas_v2.h, cusparse.h, ...)
        nvidia = os.path.join(sysconfig.get_paths()["purelib"], "nvidia")
        for sub in sorted(glob.glob(os.path.join(nvidia, "cu*"))) + [nvidia]:
            if os.path.isdir(os.path.join(sub, "include")):
                include_dirs.append(os.path.join(sub, "include"))
            if os.path.isdir(os.path.join(sub, "lib")):
                library_dirs.append(os.path.join(sub, "lib"))
        ext = cpp_extension.CUDAExtension(
            "genkern._C",
            sources,
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            define_macros=[("GENKERN_WITH_CUDA", "1")],
            # No --use_fast_math: it flushes denormals and approximates exp/tanh/division, so
            # results would drift from torch's; the epilogue kernels are memory-bound anyway.
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=extra_link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "genkern._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=extra_link,
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
