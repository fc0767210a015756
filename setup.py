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
    from torch.utils import cpp_extension

    sources = ["csrc/bindings.cpp", *_rel("csrc/cpu/*.cpp")]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc/include")]
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
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
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
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
