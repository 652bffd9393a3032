"""Build glue only: the Cython extension list and env-driven build flags.

Every ``streamcore/_x.pyx`` becomes the extension ``streamcore._x`` (the dotted
name must match the path on disk so Cython resolves ``cimport``s); the Python
API lives in ``python/streamcore`` and the benchmark suite in ``benches``.

Environment switches:
  STREAMCORE_DEBUG=1     linetrace + annotated HTML, -O0 -g
  STREAMCORE_SANITIZE=1  AddressSanitizer and UBSan
  STREAMCORE_COVERAGE=1  line tracing for Cython.Coverage
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from Cython.Compiler import Options
from setuptools import Extension, setup

Options.warning_errors = True

DEBUG = os.environ.get("STREAMCORE_DEBUG") == "1"
SANITIZE = os.environ.get("STREAMCORE_SANITIZE") == "1"
COVERAGE = os.environ.get("STREAMCORE_COVERAGE") == "1"

compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
link_args: list[str] = []
# _arrow runs per-record loops on a helper thread (pthreads); gcc and clang take -pthread.
compile_args += ["-pthread"]
link_args += ["-pthread"]
macros = []
if SANITIZE:
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]
if DEBUG or COVERAGE:
    macros += [("CYTHON_TRACE_NOGIL", "1")]

extensions = [
    Extension(
        f"streamcore.{pyx.stem}",
        [str(pyx)],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
    )
    for pyx in sorted(Path("streamcore").glob("_*.pyx"))
]

directives = {
    "language_level": 3,
    "freethreading_compatible": True,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
    "linetrace": DEBUG or COVERAGE,
}

setup(
    package_dir={"": "python", "streamcore.benches": "benches"},
    packages=["streamcore", "streamcore.sources", "streamcore.testing", "streamcore.benches"],
    ext_modules=cythonize(
        extensions,
        build_dir="build/cython",
        compiler_directives=directives,
        annotate=DEBUG,
        show_all_warnings=True,
    ),
)
