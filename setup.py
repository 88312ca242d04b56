"""Builds the C++ extension tga_fast._C with CMake (CMakeLists.txt); the package metadata is in pyproject.toml.

    pip install --no-build-isolation .       # a wheel with tga_fast/_C.<abi>.so
    pip install --no-build-isolation -e .    # editable: the .so is written into ./tga_fast/

--no-build-isolation: the extension must be compiled against the torch that is installed (see pyproject.toml).

Environment:
    TGA_FAST_SKIP_CPP_BUILD=1   no extension at all: a pure-Python install (the ops use the PyTorch reference)
    TGA_FAST_NATIVE=1           -DTGA_FAST_NATIVE=ON (-march=native; the .so is then not portable)
    TGA_FAST_BUILD_TYPE=Debug   CMAKE_BUILD_TYPE (default Release)
    TGA_FAST_CMAKE_ARGS="..."   extra arguments for the CMake configure step
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "y", "on"}


class CMakeExtension(Extension):
    """An extension whose sources CMake knows: setuptools only needs its name."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures and builds with CMake + Ninja in build/<tag>, then puts _C*.so where setuptools wants it
    (get_ext_fullpath: the build/lib tree for a wheel, ./tga_fast/ for an editable install)."""

    def build_extension(self, ext: Extension) -> None:
        import torch  # the installed torch (no build isolation): its CMake config and headers

        root = os.path.dirname(os.path.abspath(__file__))
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_type = os.environ.get("TGA_FAST_BUILD_TYPE", "Release")
        native = "ON" if _env_flag("TGA_FAST_NATIVE") else "OFF"
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}-{build_type.lower()}" + (
            "-native" if native == "ON" else ""
        )
        build_dir = os.path.join(root, "build", tag)
        output_dir = os.path.join(build_dir, "out")
        configure = [
            "cmake",
            "-S", root,
            "-B", build_dir,
            "-G", "Ninja",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DTGA_FAST_NATIVE={native}",
            f"-DTGA_FAST_OUTPUT_DIR={output_dir}",
            *shlex.split(os.environ.get("TGA_FAST_CMAKE_ARGS", "")),
        ]  # fmt: skip
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", build_dir], check=True)

        built = glob.glob(os.path.join(output_dir, "_C*.so"))
        if len(built) != 1:
            raise RuntimeError(f"expected one _C*.so in {output_dir}, found {built}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(built[0], target)


ext_modules = [] if _env_flag("TGA_FAST_SKIP_CPP_BUILD") else [CMakeExtension("tga_fast._C")]
setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
