"""Keep the calling thread's alternate signal stack across a native call that replaces it.

OpenVINO's CPU plugin (2026.4) installs its own alternate signal stack (``sigaltstack``) on the
thread that compiles a model, remembering the one it replaced, and puts the remembered one back
when the compiled model is destroyed. With two compiled models released in any order other than
the reverse of their creation, the thread is left with a stack that was already freed. Python's
signal handlers (and faulthandler's) run on the alternate stack, so the next signal the process
handles - ``SIGCHLD`` from a finished subprocess once a multi-worker ``DataLoader`` has installed
its handler, ``SIGALRM``, ``SIGTERM`` - kills it with a segmentation fault that faulthandler cannot
report either. :func:`preserved_signal_stack` puts the thread's own stack back after the call, so
the plugin never sees its own stack as the current one and leaves it alone when it is destroyed.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

__all__ = ["preserved_signal_stack", "current_signal_stack"]


class _StackT(ctypes.Structure):  # struct stack_t (Linux, glibc and musl)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


def current_signal_stack() -> tuple[int, int, int] | None:
    """``(ss_sp, ss_flags, ss_size)`` of this thread's alternate signal stack (None off Linux)."""
    libc = _libc()
    if libc is None:
        return None
    st = _StackT()
    if libc.sigaltstack(None, ctypes.byref(st)) != 0:
        return None
    return int(st.ss_sp or 0), int(st.ss_flags), int(st.ss_size)


@contextlib.contextmanager
def preserved_signal_stack() -> Iterator[None]:
    """Run the body, then give this thread back the alternate signal stack it had before."""
    libc = _libc()
    saved = _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)
