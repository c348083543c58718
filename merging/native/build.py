"""Compile a C source of this package into a shared library at first use, cache it, load it with ctypes.

No build step and no new dependency: the system C compiler (MERGELAB_CC, else CC, else cc, gcc or clang on
PATH) compiles the source once; the library is cached under a name keyed by a hash of the source and its
local headers, the compiler's identity, the flags and, for -march=native, the CPU's features, so an edited
source or header, another compiler or another CPU never loads a stale library. The cache is the first
writable of MERGELAB_NATIVE_DIR, the package's gitignored `_build/`, MERGELAB_HOME's cache/native and a
private temp folder. Each process compiles into a temporary file and renames it into place, so concurrent
first uses (parallel tests, two merges) never load a half-written library. Any failure (no compiler, a
compile error, a load error) is logged once at debug level and gives None: the caller keeps its torch path.
MERGELAB_NATIVE=0 turns native code off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import mergelab_home

SWITCH_ENV = "MERGELAB_NATIVE"
COMPILER_ENV = "MERGELAB_CC"
DIR_ENV = "MERGELAB_NATIVE_DIR"
PACKAGE_BUILD_DIR = Path(__file__).resolve().parent / "_build"

# Never -ffast-math or -ffinite-math-only: NaN must propagate (the engine's NaN/Inf check reads sums).
# -ffp-contract=fast only lets the compiler fuse a * b + c into one FMA.
PORTABLE_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=fast")
FLAG_SETS = (("-march=native", *PORTABLE_FLAGS), PORTABLE_FLAGS)  # the second if a compiler refuses native
COMPILE_TIMEOUT_S = 120

log = logging.getLogger(__name__)


def enabled() -> bool:
    """False when MERGELAB_NATIVE is 0/false/no/off: every caller then takes its torch path."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def load(source: Path, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The library built from `source` (a C file), compiled on first use, with `extra_flags` after the
    usual ones (e.g. "-ffp-contract=off" where a kernel must round every product, as torch does); None
    when native code is off or cannot be built here (logged once per source and setting)."""
    if not enabled():
        return None
    settings = tuple(os.environ.get(k) for k in (COMPILER_ENV, "CC", DIR_ENV, mergelab_home.ENV_VAR))
    with _LOADING:  # the two halves of the first tensor ask at once: one compile, not two
        return _load(Path(source), settings, tuple(extra_flags))


_LOADING = threading.Lock()


def function(source: Path, name: str, argtypes: list, restype=None, extra_flags: tuple[str, ...] = ()):
    """The C function `name` of the library built from `source`, its ctypes signature set once; None when
    the library is unavailable (the caller then takes its torch path)."""
    lib = load(source, extra_flags)
    if lib is None:
        return None
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.argtypes, fn.restype = argtypes, restype
    return fn


def _new_lock_after_fork() -> None:
    """A child forked while another thread compiled would inherit the lock held, for ever."""
    global _LOADING
    _LOADING = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


@functools.cache
def _load(source: Path, settings: tuple, extra_flags: tuple[str, ...]) -> ctypes.CDLL | None:
    """One attempt per source and setting (compiler, cache folder) per process."""
    try:
        return _build_and_load(source, extra_flags)
    except NativeUnavailable as exc:
        log.debug("native %s unavailable, using the torch path: %s", source.name, exc)
        return None


class NativeUnavailable(RuntimeError):
    """The library cannot be built or loaded here; the message says why."""


def _build_and_load(source: Path, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    compiler = _compiler()
    identity = _compiler_identity(compiler)
    text = _source_text(source)
    folder = cache_folder()
    errors = []
    for usual in FLAG_SETS:
        flags = (*usual, *extra_flags)
        digest = hashlib.sha256(
            b"\0".join([text, identity.encode(), " ".join(flags).encode(), _cpu_key(flags).encode()])
        ).hexdigest()[:20]
        library = folder / f"{source.stem}-{digest}.so"
        if not library.exists():
            try:
                _compile(compiler, flags, source, library)
            except NativeUnavailable as exc:
                errors.append(str(exc))
                continue
        try:
            lib = ctypes.CDLL(str(library))
        except OSError as exc:
            raise NativeUnavailable(f"cannot load {library}: {exc}") from exc
        log.debug("native %s loaded from %s", source.name, library)
        return lib
    raise NativeUnavailable("; ".join(errors))


_LOCAL_INCLUDE = re.compile(rb'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _source_text(source: Path, seen: frozenset[Path] = frozenset()) -> bytes:
    """The source and, after it, every local header it includes (`#include "name"`, next to it), so an
    edited header builds a new library like an edited source."""
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise NativeUnavailable(f"cannot read {source}: {exc}") from exc
    parts = [text]
    for name in _LOCAL_INCLUDE.findall(text):
        header = source.parent / name.decode()
        if header not in seen:
            parts.append(_source_text(header, seen | {source}))
    return b"\0".join(parts)


def _compiler() -> list[str]:
    named = os.environ.get(COMPILER_ENV) or os.environ.get("CC")
    candidates = [shlex.split(named)] if named else [["cc"], ["gcc"], ["clang"]]
    for argv in candidates:
        path = shutil.which(argv[0]) if argv else None
        if path:
            return [path, *argv[1:]]
    raise NativeUnavailable(f"no C compiler found (tried {' '.join(a[0] for a in candidates if a)})")


def _compiler_identity(compiler: list[str]) -> str:
    """The compiler's path and `--version` text: a new compiler builds a new library."""
    try:
        out = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"cannot run {compiler[0]}: {exc}") from exc
    return f"{' '.join(compiler)}\n{out.stdout}"


def _cpu_key(flags: tuple[str, ...]) -> str:
    """For -march=native, the CPU's feature list: a library built for one CPU may not run on another."""
    if "-march=native" not in flags:
        return platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            features = next((line for line in fh if line.split(":")[0].strip() in {"flags", "Features"}), "")
    except OSError:
        features = ""
    return f"{platform.machine()} {platform.processor()} {features.strip()}"


def cache_folder() -> Path:
    """The first usable of MERGELAB_NATIVE_DIR, the package's _build/, MERGELAB_HOME's cache/native and a
    private temp folder."""
    named = os.environ.get(DIR_ENV)
    candidates = (
        [Path(named)]
        if named
        else [
            PACKAGE_BUILD_DIR,
            mergelab_home.home_dir() / "cache" / "native",
            Path(tempfile.gettempdir()) / f"mergelab-native-{os.getuid()}",
        ]
    )
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        # a shared temp folder could hold someone else's library: only one we own is loaded from
        if os.access(folder, os.W_OK | os.X_OK) and folder.stat().st_uid == os.getuid():
            return folder
    tried = ", ".join(map(str, candidates))
    raise NativeUnavailable(f"no writable folder for native libraries (tried {tried})")


def _compile(compiler: list[str], flags: tuple[str, ...], source: Path, library: Path) -> None:
    """Compile into a temporary file next to `library`, then rename it into place atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{library.stem}-", suffix=".so.tmp", dir=library.parent)
    os.close(fd)
    try:
        try:
            out = subprocess.run(
                [*compiler, *flags, "-o", tmp, str(source)],
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeUnavailable(f"{compiler[0]} failed to run: {exc}") from exc
        if out.returncode != 0 or os.path.getsize(tmp) == 0:
            detail = (out.stderr or out.stdout).strip().splitlines()
            raise NativeUnavailable(
                f"{' '.join(compiler)} {' '.join(flags)} exited {out.returncode}"
                + (f": {detail[-1]}" if detail else "")
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
