"""The one module that relies on FFCV internals. Written against FFCV 1.0.2.

Everything else in :mod:`partialnet.data.ffcv` uses FFCV's public API (``DatasetWriter``,
``Loader``, fields, decoders, transforms). What this module relies on, and what to re-check
when FFCV is upgraded:

* the ``.beton`` header layout (``ffcv/types.py`` ``HeaderType``) and the 24-byte allocation
  table entries (``ALLOC_TABLE_TYPE``); ``ffcv.reader.Reader``'s ``alloc_table``, ``handlers``,
  ``field_names`` and ``metadata`` (:func:`read_index`, :func:`read_labels`);
* ``Loader.__iter__`` (``ffcv/loader/loader.py``): :func:`start_epoch` does what it does, but
  for a given epoch and from a given batch (FFCV's own ``__iter__`` always starts at batch 0 of
  ``next_epoch``); it uses ``Loader.traversal_order``, ``Loader.code``, ``generate_code()``,
  ``Compiler.set_num_threads`` and ``EpochIterator``;
* the pipeline-operation protocol (``Operation.generate_code``, ``declare_state_and_memory``,
  ``AllocationQuery``, the ``jit_mode`` field of the state) for :func:`torch_normalize_op`;
* ``DatasetWriter._write_common`` (``ffcv/writer.py``): it starts its workers with the module's
  ``Process``, creates its queues with the module's ``Queue`` and its progress counter with the
  module's ``Value``, and polls that counter with the module's ``sleep``; :class:`WriterWatch`
  swaps those four names while a write runs,
  and releases the writer's ``metadata_sm`` shared memory after a failure.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import queue as queue_module
import time
import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

FFCV_VERSION = "1.0.2"

#: A version-2 .beton header, aligned: version u2, num_fields u2, page_size u4,
#: num_samples u8, alloc_table_ptr u8.
BETON_HEADER = np.dtype(
    [("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")],
    align=True,
)
ALLOC_ENTRY_BYTES = 24  # sample_id, ptr, size: three u8

_warned_version: list[str] = []


def read_index(path) -> tuple[int, int, list[str]]:
    """``(allocation entries, end of the last sample's data, field names)`` as FFCV's reader sees them."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    table = reader.alloc_table
    end = int((table["ptr"] + table["size"]).max()) if len(table) else 0
    return len(table), end, list(reader.handlers)


def read_labels(path, field: str = "label") -> np.ndarray:
    """The ``field`` value of every sample, from the file's metadata table."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    ix = reader.field_names.index(field)
    return np.asarray(reader.metadata[f"f{ix}"]).reshape(-1)


def warn_if_other_version() -> None:
    """One warning per process when the installed FFCV is not the version this module was written against."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("ffcv")
    except PackageNotFoundError:
        return
    if found != FFCV_VERSION and not _warned_version:
        _warned_version.append(found)
        warnings.warn(
            f"FFCV {found} is installed; partialnet's FFCV integration was written against {FFCV_VERSION} "
            "(bash scripts/install_ffcv.sh installs it)",
            stacklevel=3,
        )


# --------------------------------------------------------------------------------- loader
def start_epoch(loader, epoch: int, skip_batches: int = 0):
    """``iter(loader)`` for ``epoch``, starting after ``skip_batches`` batches.

    The order is FFCV's own for ``(seed, epoch)``; ``loader.next_epoch`` is left at ``epoch + 1``
    as FFCV's ``__iter__`` would leave it.
    """
    from ffcv.loader.epoch_iterator import EpochIterator
    from ffcv.pipeline.compiler import Compiler

    Compiler.set_num_threads(loader.num_workers)
    order = loader.traversal_order.sample_order(epoch)
    order = order[: len(loader) * loader.batch_size] if loader.drop_last else order
    order = order[skip_batches * loader.batch_size:]
    loader.next_epoch = epoch + 1
    if loader.code is None or loader.recompile:
        loader.generate_code()
    return EpochIterator(loader, order)


_OPS: dict[str, type] = {}


def torch_normalize_op():
    """An FFCV ``Operation`` class normalising uint8 NHWC torch tensors on their own device.

    FFCV's own ``NormalizeImage`` needs CuPy on the GPU; this one uses torch ops and writes into
    a buffer FFCV allocates (so FFCV's per-slot stream/event bookkeeping protects it). Built
    once per process (FFCV must be importable).
    """
    if "TorchNormalize" in _OPS:
        return _OPS["TorchNormalize"]
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.operation import Operation

    class TorchNormalize(Operation):
        def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype):
            super().__init__()
            self.mean = torch.tensor(mean, dtype=torch.float32)  # 0..255 units
            self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32)
            self.dtype = dtype

        def generate_code(self):
            consts: dict = {}

            def normalize(images, dst):
                out = dst[: images.shape[0]]
                if images.device not in consts:
                    consts[images.device] = (self.mean.to(images.device), self.inv_std.to(images.device))
                m, s = consts[images.device]
                out.copy_((images.float() - m) * s)
                return out

            return normalize

        def declare_state_and_memory(self, previous_state):
            return (
                replace(previous_state, jit_mode=False, dtype=self.dtype),
                AllocationQuery(previous_state.shape, dtype=self.dtype, device=previous_state.device),
            )

    _OPS["TorchNormalize"] = TorchNormalize
    return TorchNormalize


# --------------------------------------------------------------------------------- writer
class WriterWorkerDied(RuntimeError):
    """A worker process of FFCV's ``DatasetWriter`` ended before the write was complete."""


class WriterWatch:
    """Turns a dead ``DatasetWriter`` worker into :class:`WriterWorkerDied` instead of a hang.

    FFCV's writer waits forever when one of its worker processes dies (killed, out of memory,
    ``os._exit``): its progress loop polls a shared counter that the dead worker never advances,
    and it then blocks on a queue the worker never fills. While this context is active, the
    ``Process``, ``Queue``, ``Value`` and ``sleep`` names of ``ffcv.writer`` are swapped (restored
    on exit) so that the main thread itself checks the workers between polls and between queue
    reads, and raises when one has died. Workers are always forked (as FFCV 1.0.2 expects on
    Linux), also when another start method was made the default, and are joined on exit (FFCV
    leaves them unjoined). No helper thread and no signal is involved, so the check works
    whatever SIGINT handler the process has (a ``KeyboardInterrupt`` sent with
    ``_thread.interrupt_main`` is silently dropped once SIGINT is ``SIG_IGN`` or ``SIG_DFL``, and
    Lightning leaves it so: ``SIG_IGN`` after a fit interrupted by a KeyboardInterrupt, ``SIG_DFL``
    after closing a process group).

    A worker counts as dead when it exited with a non-zero code, or when every worker has
    exited (its ``sentinel`` is ready, which holds even if something else reaped it) while the
    writer's progress counter is still below ``total`` samples.
    """

    def __init__(self, total: int, poll_s: float = 0.1):
        self.total = int(total)
        self.poll_s = poll_s
        self.workers: list = []
        self.counters: list = []
        self._owner = os.getpid()
        self._saved: dict = {}

    def check(self, waiting_on_queue: bool = False) -> None:
        """Raise :class:`WriterWorkerDied` if a worker died (a no-op inside the workers).

        ``waiting_on_queue``: called after a queue read timed out; once every worker has exited
        nothing more can arrive (a worker's queue data is flushed before it exits).
        """
        if os.getpid() != self._owner or not self.workers:
            return
        bad = [c for c in (p.exitcode for p in self.workers) if c not in (None, 0)]
        sentinels = [p.sentinel for p in self.workers]
        all_gone = len(multiprocessing.connection.wait(sentinels, timeout=0)) == len(sentinels)
        # once every worker has exited the counter is final: below the total, the work is lost
        unfinished = bool(self.counters) and int(self.counters[-1].value) < self.total
        if bad or (all_gone and (unfinished or waiting_on_queue)):
            self.terminate()
            why = f"exit code {bad[0]}" if bad else "every worker exited before the write was complete"
            raise WriterWorkerDied(f"a writer worker process died ({why})")

    def terminate(self) -> None:
        for p in self.workers:
            if p.exitcode is None:
                p.terminate()
        self.join()

    def join(self) -> None:
        for p in self.workers:
            p.join(timeout=5)

    def __enter__(self):
        import ffcv.writer as writer_module

        watch = self
        fork = multiprocessing.get_context("fork")  # what FFCV's writer is built for, whatever the default
        real_sleep = time.sleep

        class TrackedProcess(fork.Process):
            def start(self_):
                super().start()
                watch.workers.append(self_)

        class WatchedQueue(multiprocessing.queues.Queue):
            def get(self_, block=True, timeout=None):
                if not block or timeout is not None or os.getpid() != watch._owner:
                    return super().get(block, timeout)
                while True:
                    try:
                        return super().get(True, watch.poll_s)
                    except queue_module.Empty:
                        watch.check(waiting_on_queue=True)

        def new_queue(maxsize: int = 0):
            return WatchedQueue(maxsize, ctx=fork)

        def tracked_value(*args, **kwargs):
            counter = fork.Value(*args, **kwargs)
            watch.counters.append(counter)
            return counter

        def checked_sleep(seconds: float) -> None:
            real_sleep(seconds)
            watch.check()

        swaps = {"Process": TrackedProcess, "Queue": new_queue, "Value": tracked_value, "sleep": checked_sleep}
        self._saved = {name: getattr(writer_module, name) for name in swaps}
        self._module = writer_module
        for name, value in swaps.items():
            setattr(writer_module, name, value)
        return self

    def __exit__(self, exc_type, exc, tb):
        for name, value in self._saved.items():
            setattr(self._module, name, value)
        if exc_type is not None:
            self.terminate()
        else:
            self.join()
        return False


def release_writer_memory(writer) -> None:
    """Free the shared-memory block a ``DatasetWriter`` leaves behind when its write failed."""
    sm = getattr(writer, "metadata_sm", None)
    if sm is None or isinstance(sm, int):
        return
    try:
        sm.close()
        sm.unlink()
    except (OSError, FileNotFoundError):
        pass
