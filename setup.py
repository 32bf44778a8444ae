"""Builds the Cython extensions in ext/ (everything else is in setup.cfg).

`resilfs._isal` is built only where pkg-config finds Intel ISA-L (Debian's libisal-dev);
without it the `isal` codec backend reports itself unavailable.
"""
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup


def pkg_config(package: str, *flags: str) -> list[str] | None:
    """Return pkg-config's answer split into words, or None when the package is missing."""
    try:
        out = subprocess.run(["pkg-config", *flags, package], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.split()


COMPILE_ARGS = ["-O3", "-march=native", "-fno-strict-aliasing"]

extensions = [
    Extension("resilfs._xor", ["ext/xor.pyx"], extra_compile_args=COMPILE_ARGS),
    Extension("resilfs._stripe", ["ext/stripe.pyx"], extra_compile_args=COMPILE_ARGS),
    Extension("resilfs._copy", ["ext/copy.pyx"], extra_compile_args=COMPILE_ARGS + ["-pthread"]),
]
isal_libs = pkg_config("libisal", "--libs")
if isal_libs is not None:
    extensions.append(Extension(
        "resilfs._isal", ["ext/isal.pyx"],
        extra_compile_args=COMPILE_ARGS + (pkg_config("libisal", "--cflags") or []),
        extra_link_args=isal_libs))

setup(ext_modules=cythonize(extensions, language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False}))
