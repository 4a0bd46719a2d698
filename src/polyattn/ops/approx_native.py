r"""The native (C++) kernel of the top-degree split: feature construction fused into the products.

:class:`NativeProducts` runs the plan's :class:`~polyattn.planning.approx_split.SplitTop` when the
plan says ``native`` (float32 on the CPU, the library built): outside autograd ``apply`` and
``summarize`` call ``csrc/approx_native.cpp``, which builds the degree ``<= p-1`` features ``G``
tile by tile straight into the register blocks' layout and runs every slot over exactly its own
rows (the math is in :mod:`polyattn.planning.approx_split`; why a kernel of our own, in the source's
header); leading batch dims are a loop of kernel calls. Under autograd the same object runs the
torch GEMMs of :class:`SplitProducts` (the plan prints both).

**Build.** The source ships with the package and is compiled on first use with the system C++
compiler (``$CXX``, else ``c++`` / ``g++`` / ``clang++``; ``-O3 -march=native``) into a cache
directory (``$POLYATTN_CACHE_DIR``, else ``$XDG_CACHE_HOME/polyattn`` or ``~/.cache/polyattn``, else
a per-user folder in the temp dir: the first one that works), keyed by a hash of the source, the
flags, the compiler's version and the CPU's flags, written to a temporary file and renamed (two
processes never see half a library). A library is loaded only from a folder and a file owned by
this user and writable by nobody else (a shared temp dir must not hand us someone else's code).
``POLYATTN_NATIVE=0`` turns it off. :func:`status` says where it came from, or why it is off.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..planning.approx_bound import feature_table
from ..planning.approx_split import SplitTop, slot_table
from .approx_features import aligned_empty, construction_steps
from .approx_split import SplitProducts, _grad

__all__ = ["NativeProducts", "library", "status", "native_threads", "SOURCE", "FLAGS"]

SOURCE = Path(__file__).with_name("csrc") / "approx_native.cpp"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-pthread")
#: rows of the summary's row-major feature tile (each register block's partial sums are flushed
#: once per tile; measured at d = 16, 20, 32, p = 3-5: 96-128 rows best, 16 rows up to 1.6x slower)
SUMMARY_TILE_ROWS = 128


def _cache_dirs() -> list[Path]:
    """Where the built library may live, in order (the first writable one is used)."""
    env = os.environ.get("POLYATTN_CACHE_DIR")
    if env:
        return [Path(env)]
    xdg = os.environ.get("XDG_CACHE_HOME")
    user = (Path(xdg) if xdg else Path.home() / ".cache") / "polyattn"
    return [user, Path(tempfile.gettempdir()) / f"polyattn-{os.getuid() if hasattr(os, 'getuid') else 'user'}"]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i, i64, p = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
    lib.pa_tile_lanes.restype = i
    lib.pa_tile_lanes.argtypes = []
    lib.pa_apply_workspace.restype = i64
    lib.pa_apply_workspace.argtypes = [i, i, i]
    lib.pa_summary_workspace.restype = i64
    lib.pa_summary_workspace.argtypes = [i, i, i, i, i]
    lib.pa_apply.restype = i
    lib.pa_apply.argtypes = [i, i, i, p, i, p, p, p, i, p, p, i64, i64, p, i64, p, i]
    lib.pa_summary.restype = i
    lib.pa_summary.argtypes = [i, i, i, p, i, p, p, p, i, p, i64, i64, p, i64, i64, p, i64, p, i, i]
    return lib


def library_name(cxx: str) -> str:
    """The cache file name: a hash of the source, the flags, the compiler's version and the CPU's
    flags (a ``-march=native`` build must not be loaded on another CPU sharing the cache)."""
    source = SOURCE.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(),
                                     _cpu_flags().encode()])).hexdigest()[:20]
    return f"approx_native-{key}.so"


@lru_cache(maxsize=1)
def _build() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("POLYATTN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "turned off by POLYATTN_NATIVE=0"
    cxx = _compiler()
    if cxx is None:
        return None, "no C++ compiler found ($CXX, c++, g++, clang++)"
    try:
        name = library_name(cxx)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot read the source or run {cxx}: {exc}"
    errors = []
    for folder in _cache_dirs():
        target = folder / name
        unsafe = _unsafe(folder, folder=True)
        if unsafe:
            errors.append(unsafe)
            continue
        for attempt in range(2):
            if not target.exists():
                err = _compile(cxx, target)
                if err:
                    errors.append(err)
                    break
            unsafe = _unsafe(target)
            if unsafe:
                errors.append(unsafe)
                break
            try:
                return _declare(ctypes.CDLL(str(target))), f"built with {Path(cxx).name} ({target})"
            except OSError as exc:  # a damaged cache entry: build it again once
                if attempt:
                    errors.append(f"cannot load {target}: {exc}")
                    break
                target.unlink(missing_ok=True)
    return None, "; ".join(errors)


def _unsafe(path: Path, folder: bool = False) -> str:
    """Why ``path`` (a cache ``folder``, created private if missing, or a built library) must not be
    used: owned by another user or writable by group / others. Empty when it is safe."""
    try:
        if folder and not path.exists():
            path.mkdir(mode=0o700, parents=True)
        info = path.stat()
    except OSError as exc:
        return f"cannot use {path}: {exc}"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} belongs to another user: not loading code from it"
    if info.st_mode & 0o022:
        return f"{path} is writable by other users: not loading code from it"
    return ""


def _compile(cxx: str, target: Path, flags: tuple[str, ...] = FLAGS) -> str:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write the cache directory {target.parent}: {exc}"
    try:
        res = subprocess.run([cxx, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            return f"{Path(cxx).name} failed: {(res.stderr or res.stdout).strip()[:500]}"
        os.replace(tmp, target)
        return ""
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{Path(cxx).name} failed: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The loaded native library (built on first use), or None (see :func:`status`)."""
    return _build()[0]


def status() -> str:
    """Where the native library comes from, or why it is not used."""
    return _build()[1]


def native_threads(device: torch.device, dtype: torch.dtype) -> tuple[int, str]:
    """``(threads, reason)``: the thread count the native kernel would run with for these inputs
    (torch's intra-op thread count), or ``0`` and why it does not apply."""
    if device.type != "cpu":
        return 0, f"native kernel: CPU only (inputs on {device.type})"
    if dtype != torch.float32:
        return 0, f"native kernel: float32 only (inputs are {str(dtype).replace('torch.', '')})"
    if library() is None:
        return 0, f"native kernel unavailable: {status()}"
    return torch.get_num_threads(), ""


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _check(code: int) -> None:
    if code:
        raise MemoryError("the native approx kernel could not allocate its bookkeeping")


class NativeProducts(SplitProducts):
    """:class:`SplitProducts` whose no-grad float32 CPU products run in the native kernel.

    ``chunk`` builds nothing (the kernel builds ``G``): it returns a two-item list, the chunk's
    ``q^T`` and, filled in only when the torch path needs it, the split's chunk.
    """

    def __init__(self, split: SplitTop, scale: float, z: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(split, scale, z, device, dtype)
        lib = library()
        if lib is None:  # the plan was made where the library loads; this is a different process state
            raise RuntimeError(f"the plan runs the native approx kernel, which is unavailable: {status()}")
        self.lib = lib
        self.threads = max(1, split.native)
        self.native_rows = split.native_rows or split.rows
        d, p = split.d, split.degree
        r1, _, slots = slot_table(d, p)
        steps = construction_steps(feature_table(d, p - 1)[0], d)

        def i32(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.int32)

        # the kernel's tables, kept alive here: construction steps, slot rows, slot coordinates
        # (-1: the low slot; the others multiply by q[coord], as the torch split's ``coord``)
        self._arrays = (i32([x for step in steps for x in step]), i32([a for a, _, _ in slots]),
                        i32([b for _, b, _ in slots]), torch.cat([self.coord.new_full((1,), -1), self.coord]).int())
        steps_t, sa, sb, sc = self._arrays
        self._tables = (d, r1, len(steps), _ptr(steps_t), self.S, _ptr(sa), _ptr(sb), _ptr(sc), z)
        self.tile_rows = SUMMARY_TILE_ROWS
        # work buffers of the kernel's threads, allocated once (+16 floats: the kernel aligns them)
        self.work_apply = torch.empty(lib.pa_apply_workspace(r1, z, self.threads) + 16)
        self.work_summary = torch.empty(lib.pa_summary_workspace(r1, self.S, z, self.tile_rows, self.threads) + 16)
        self.inv_slot, self.inv_row = self.inv // self.K, self.inv % self.K  # feature -> (slot, row of G)
        self._packed: dict[int, weakref.ref] = {}  # summaries prepare() returned in the kernel's layout

    def chunk_rows(self, grad: bool) -> int:
        """Outside autograd the plan's ``split.native_rows``, under autograd the torch split's rows."""
        return self.rows if grad else self.native_rows

    # -- eligibility -------------------------------------------------------------------------
    @staticmethod
    def _takes(*xs: torch.Tensor) -> bool:
        return not _grad(*xs) and all(x.dtype == torch.float32 and x.device.type == "cpu" for x in xs)

    def chunk(self, qt: torch.Tensor) -> Any:
        return [qt, None]

    def _split_chunk(self, ch: list) -> Any:
        if ch[1] is None:
            ch[1] = super().chunk(ch[0])
        return ch[1]

    @staticmethod
    def _lanes(x: torch.Tensor) -> torch.Tensor:
        return x if x.stride(-1) == 1 else x.contiguous()

    def prepare(self, a: torch.Tensor) -> torch.Tensor:
        """Outside autograd: the summary ``A^T`` (``[..., z, r]``, feature order) as ``[..., S, r_1, z]``
        (each feature's channels adjacent: what the apply kernel broadcasts), in one gather; under
        autograd the torch split's slot-stacked layout."""
        if not self._takes(a):
            return super().prepare(a)
        ext = torch.cat([a, a.new_zeros(*a.shape[:-1], 1)], dim=-1).transpose(-1, -2).contiguous()  # [..., r+1, z]
        pk = ext.index_select(-2, self.gather).unflatten(-2, (self.S, self.K))  # rows of z: a fast gather
        self._packed[id(pk)] = weakref.ref(pk)
        return pk

    def _is_packed(self, p: torch.Tensor) -> bool:
        ref = self._packed.get(id(p))
        return ref is not None and ref() is p

    def _stacked(self, p: torch.Tensor) -> torch.Tensor:
        """A summary in the torch split's layout (``[..., S z, r_1]``), whichever layout it has."""
        if not self._is_packed(p):
            return p
        return p.transpose(-1, -2).reshape(*p.shape[:-3], self.S * self.z, self.K)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        """The accumulated ``[..., S z, r_1]`` summary in feature order, ``[..., z, r]``: one gather of
        each feature's (slot, row) column (the torch split's round trip copies all ``S z r_1``)."""
        if not self._takes(acc):
            return super().finish(acc)
        st = acc.unflatten(-2, (self.S, self.z)).movedim(-3, 0)  # [S, ..., z, K]
        return st[self.inv_slot, ..., self.inv_row].movedim(0, -1)  # [r, ..., z] -> [..., z, r]

    # -- products (leading batch dims: one kernel call per batch element) ----------------------
    def apply(self, p: torch.Tensor, ch: Any) -> torch.Tensor:
        qt = ch[0]
        if not self._takes(p, qt) or not self._is_packed(p):
            return super().apply(self._stacked(p), self._split_chunk(ch))
        pk = p
        batch = torch.broadcast_shapes(p.shape[:-3], qt.shape[:-2])
        rows = qt.shape[-1]
        out = torch.empty(*batch, self.z, rows, dtype=qt.dtype)
        pk = pk.expand(*batch, *pk.shape[-3:])
        qt = qt.expand(*batch, *qt.shape[-2:])
        for idx in itertools.product(*map(range, batch)):  # prepare() made each [S, K, z] block contiguous
            qt_b = self._lanes(qt[idx])
            _check(self.lib.pa_apply(*self._tables, _ptr(pk[idx]), _ptr(qt_b), qt_b.stride(0), rows, _ptr(out[idx]),
                                     rows, _ptr(self.work_apply), self.threads))
        return out

    def summarize(self, m: torch.Tensor, ch: Any, acc: torch.Tensor | None) -> torch.Tensor:
        qt = ch[0]
        batch = torch.broadcast_shapes(m.shape[:-2], qt.shape[:-2])
        if (not self._takes(m, qt) or (acc is not None and (not self._takes(acc) or acc.stride(-1) != 1
                                                            or acc.shape[:-2] != batch))):
            return super().summarize(m, self._split_chunk(ch), acc)
        if acc is None:
            acc = aligned_empty(*batch, self.S * self.z, self.K, dtype=qt.dtype, device=qt.device, zero=True)
        m = m.expand(*batch, *m.shape[-2:])
        qt = qt.expand(*batch, *qt.shape[-2:])
        for idx in itertools.product(*map(range, batch)):
            m_b, qt_b, acc_b = m[idx], self._lanes(qt[idx]), acc[idx]
            _check(self.lib.pa_summary(*self._tables, _ptr(m_b), m_b.stride(0), m_b.stride(1), _ptr(qt_b),
                                       qt_b.stride(0), qt_b.shape[-1], _ptr(acc_b), acc_b.stride(0),
                                       _ptr(self.work_summary), self.tile_rows, self.threads))
        return acc

