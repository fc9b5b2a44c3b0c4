"""gptkit's one native kernel (gptkit/kernels/int8_matvec.c), built with the machine's C compiler at first use.

Built once per machine into the user's cache folder (~/.cache/gptkit/kernels, or under $XDG_CACHE_HOME), named by a
hash of its source and flags, and loaded with ctypes: no build step at install, no Python headers. Where it cannot be
built (no C compiler, a CPU without AVX2 and FMA, a compiler error), `int8_matvec()` returns None and the int8
precision uses torch's own kernel instead, after one note on stderr.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from gptkit.files import atomic_path, user_cache_folder
from gptkit.machine import cpu_flags

SOURCE = Path(__file__).with_name("kernels") / "int8_matvec.c"
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
DISABLE_ENV = "GPTKIT_NO_NATIVE"  # set to 1 to use torch's kernels only
K_MULTIPLE = 32  # the kernel reads rows 32 weights at a time: layers whose inputs are not a multiple use torch's


def cache_folder():
    return user_cache_folder() / "kernels"


def c_compiler():
    """$CC, else cc or gcc on PATH; None when there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def why_not_buildable():
    """Why the kernel cannot be used on this machine, or None."""
    if os.environ.get(DISABLE_ENV) == "1":
        return f"{DISABLE_ENV}=1"
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= set(cpu_flags()):
        return "this CPU has no AVX2 and FMA"
    if not SOURCE.is_file():
        return f"{SOURCE} is missing"
    if not c_compiler():
        return "no C compiler (cc) on PATH"
    return None


@functools.cache
def int8_matvec():
    """The kernel as a ctypes function int8_matvec(w, scale, bias or None, x, k_len, n_len, y, threads) taking data
    pointers, or None (see the module)."""
    reason = why_not_buildable()
    if reason is None:
        try:
            library = ctypes.CDLL(str(built_library()))
        except (OSError, subprocess.SubprocessError) as e:
            reason = f"building it failed ({str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__})"
    if reason is not None:
        if os.environ.get(DISABLE_ENV) != "1":
            print(f"note: gptkit's int8 kernel is not used ({reason}); int8 runs on torch's own kernel", file=sys.stderr, flush=True)
        return None
    function = library.int8_matvec
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int]
    function.restype = None
    return function


def built_library():
    """The kernel's shared library, compiled now unless an identical build is cached."""
    compiler = c_compiler()
    source = SOURCE.read_bytes()
    tag = hashlib.sha1(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:12]
    path = cache_folder() / f"int8_matvec-{tag}.so"
    if not path.is_file():
        with atomic_path(path) as tmp:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise subprocess.SubprocessError(result.stderr or f"{compiler} exited with {result.returncode}")
    return path
