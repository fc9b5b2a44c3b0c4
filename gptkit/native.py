"""gptkit's native kernels (gptkit/kernels/*.c), built with the machine's C compiler at first use: the int8
matrix-vector product (int8_matvec.c) and the whole one-token step of an int8 model built on it (decode_step.c).

Built once per machine into the user's cache folder (~/.cache/gptkit/kernels, or under $XDG_CACHE_HOME), named by a
hash of the sources and flags, and loaded with ctypes: no build step at install, no Python headers. Where they cannot be
built (no C compiler, a CPU without AVX2 and FMA, a compiler error), `library()` returns None and the int8 precision
uses torch's own kernel and PyTorch's step instead, after one note on stderr.
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

KERNELS = Path(__file__).with_name("kernels")
SOURCES = [KERNELS / "int8_matvec.c", KERNELS / "decode_step.c"]
HEADERS = [KERNELS / "int8_matvec.h"]
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
    missing = [str(path) for path in SOURCES + HEADERS if not path.is_file()]
    if missing:
        return f"{missing[0]} is missing"
    if not c_compiler():
        return "no C compiler (cc) on PATH"
    return None


@functools.cache
def library():
    """The kernels' loaded shared library, built now unless cached; None where it cannot be (see the module)."""
    reason = why_not_buildable()
    if reason is None:
        try:
            return ctypes.CDLL(str(built_library()))
        except (OSError, subprocess.SubprocessError) as e:
            reason = f"building it failed ({str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__})"
    if os.environ.get(DISABLE_ENV) != "1":
        print(f"note: gptkit's int8 kernel is not used ({reason}); int8 runs on torch's own kernel", file=sys.stderr, flush=True)
    return None


@functools.cache
def int8_matvec():
    """The kernel as a ctypes function int8_matvec(w, scale, bias or None, x, k_len, n_len, y, threads) taking data
    pointers, or None (see the module)."""
    return typed(library(), "int8_matvec", [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_void_p, ctypes.c_int])


@functools.cache
def decode_step():
    """decode_step(model structure, token, pos, logits, threads) of decode_step.c (gptkit/native_decode.py builds the
    structure), or None."""
    return typed(library(), "decode_step", [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int])


def forget():
    """Build or load the library afresh at the next call (tests change the environment in between)."""
    for cached in (library, int8_matvec, decode_step):
        getattr(cached, "cache_clear", lambda: None)()  # a test may have put a plain function in one's place


def typed(lib, name, argtypes):
    if lib is None:
        return None
    function = getattr(lib, name)
    function.argtypes, function.restype = argtypes, None
    return function


def built_library():
    """The kernels' shared library, compiled now unless an identical build is cached."""
    compiler = c_compiler()
    sources = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    tag = hashlib.sha1(sources + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:12]
    path = cache_folder() / f"gptkit-kernels-{tag}.so"
    if not path.is_file():
        with atomic_path(path) as tmp:
            result = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(tmp), "-lm"], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise subprocess.SubprocessError(result.stderr or f"{compiler} exited with {result.returncode}")
    return path
