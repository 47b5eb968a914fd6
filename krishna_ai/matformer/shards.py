"""Streaming safetensors I/O for slicing: the parent read with positional reads, the child written shard by shard.

Never the whole model in memory: kept row ranges are copied byte for byte (in the kernel where it
can, `copy_file_range`), column slices are gathered block by block from rows a reader thread has
read ahead, and each shard is written header first, then its tensors' data in order.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krishna_ai.core.errors import ConfigError
from krishna_ai.matformer.plan import DTYPE_BYTES, TensorPlan

CHUNK_BYTES = 64 << 20


def parse_size(size: int | str) -> int:
    """Bytes from an int or a size like "500MB", "4GB", "2GiB"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*((?:[KMGT]i?)?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ConfigError(f"bad size {size!r}: use bytes or e.g. 500MB, 4GB, 2GiB")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    return int(float(m.group(1)) * base ** "BKMGT".index(unit[0]))


class _Shard:
    """A parent shard read with positional reads, never memory-mapped: the pages a slice reads stay in the
    page cache and out of this process's resident memory (an mmap'ed 16 GB parent counted in full)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        size = struct.unpack("<Q", os.pread(self.fd, 8, 0))[0]
        self.header = json.loads(os.pread(self.fd, size, 8))
        self.base = 8 + size

    def locate(self, name: str) -> tuple[int, list[int]]:
        """(absolute byte offset, shape) of tensor `name`."""
        meta = self.header[name]
        return self.base + meta["data_offsets"][0], meta["shape"]

    def prefetch(self, offset: int, nbytes: int) -> None:
        """Ask the kernel to start reading these bytes into the page cache now (returns at once)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class _Range:
    """Bytes [offset, offset + nbytes) of the source shard that go to the child unchanged."""

    offset: int
    nbytes: int


def _read_into(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise OSError(f"unexpected end of the parent shard at byte {offset + done}")
        done += n


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data):]


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Append source bytes to dst: in the kernel (copy_file_range, as cp does), else by reads and writes."""
    copy = getattr(os, "copy_file_range", None)
    while count:
        n = 0
        if copy is not None:
            try:
                n = copy(src_fd, dst_fd, count, offset)
            except OSError:  # EXDEV on older kernels, or a file system without it
                copy = None
        if n <= 0:
            data = os.pread(src_fd, min(count, CHUNK_BYTES), offset)
            if not data:
                raise OSError(f"unexpected end of the parent shard at byte {offset}")
            _write_all(dst_fd, memoryview(data))
            n = len(data)
        offset += n
        count -= n


def _spans(handle: _Shard, plan: TensorPlan) -> tuple[list[tuple[int, int]], int]:
    """The parent byte spans (offset, nbytes) the child tensor is read from, in order, and the parent's row
    size in bytes: whole tensors and kept row ranges in blocks of at most CHUNK_BYTES of rows."""
    start, shape = handle.locate(plan.source)
    if len(shape) < 2:
        return [(start, plan.nbytes)], plan.nbytes
    row_bytes = DTYPE_BYTES[plan.dtype]
    for d in shape[1:]:
        row_bytes *= d
    step = max(1, CHUNK_BYTES // row_bytes)
    rows = plan.rows or ((0, shape[0]),)
    return [(start + r * row_bytes, (min(r + step, b) - r) * row_bytes)
            for a, b in rows for r in range(a, b, step)], row_bytes


def _read_ahead(fd: int, spans: list[tuple[int, int]], size: int) -> Iterator[memoryview]:
    """The bytes of each span in turn, read by a thread into two alternating buffers of `size` bytes: the
    disk reads span k+1 while span k is used. A view is valid until the next one is asked for."""
    free: queue.Queue[memoryview | None] = queue.Queue()
    full: queue.Queue[tuple[memoryview, int] | BaseException] = queue.Queue()
    for _ in range(2):
        free.put(memoryview(bytearray(size)))
    stop = threading.Event()

    def reader() -> None:
        try:
            for offset, nbytes in spans:
                buf = free.get()
                if buf is None or stop.is_set():
                    return
                _read_into(fd, buf[:nbytes], offset)
                full.put((buf, nbytes))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            full.put(exc)

    thread = threading.Thread(target=reader, name="krishna-slice-read", daemon=True)
    thread.start()
    try:
        for _ in spans:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            buf, nbytes = item
            yield buf[:nbytes]
            free.put(buf)
    finally:
        stop.set()
        free.put(None)
        thread.join()


def _chunks(handle: _Shard, plan: TensorPlan) -> Iterator[_Range | Any]:
    """The child tensor in row blocks of at most CHUNK_BYTES of parent rows, never the whole tensor.

    Kept rows are contiguous bytes of the parent: they come as `_Range`s to copy unchanged, each block's
    successor handed to the kernel's readahead first, so the disk reads it while this one is copied.
    Column slices (down_proj, the per-layer embedding) come as arrays gathered from a block of rows
    that a reader thread has read while the previous block was gathered and written.
    """
    import numpy as np

    spans, row_bytes = _spans(handle, plan)
    if plan.cols is None:
        for i, (offset, nbytes) in enumerate(spans):
            if i + 1 < len(spans):
                handle.prefetch(*spans[i + 1])
            yield _Range(offset, nbytes)
        return
    _, shape = handle.locate(plan.source)
    col_bytes = row_bytes // shape[1]
    cuts = [(c0 * col_bytes, c1 * col_bytes) for c0, c1 in plan.cols]
    # copy in the widest unsigned words that every cut is a multiple of (uint8 copies are slower)
    unit = next(u for u in (8, 4, 2, 1) if all(x % u == 0 for x in (row_bytes, *sum(cuts, ()))))
    word = np.dtype(f"u{unit}")
    out_row = sum(b - a for a, b in cuts)
    most_rows = max((n for _, n in spans), default=0) // row_bytes
    out = np.empty(most_rows * out_row // unit, dtype=word)
    for view in _read_ahead(handle.fd, spans, most_rows * row_bytes):
        rows = len(view) // row_bytes
        block = np.frombuffer(view, dtype=word).reshape(rows, row_bytes // unit)
        gathered = out[: rows * out_row // unit].reshape(rows, out_row // unit)
        at = 0
        for a, b in cuts:
            gathered[:, at:at + (b - a) // unit] = block[:, a // unit:b // unit]
            at += (b - a) // unit
        yield gathered  # a view of a reused buffer: written out before the next block is gathered


def write_shards(plans: list[TensorPlan], src: Path, out: Path, max_bytes: int, progress: bool,
                  between: Callable[[], None] = lambda: None) -> int:
    """Stream the planned tensors into safetensors shards (header first, then data) plus the index;
    `between` runs before each tensor (and may raise to stop)."""
    from tqdm.auto import tqdm

    groups: list[list[TensorPlan]] = [[]]
    for p in plans:
        if groups[-1] and sum(x.nbytes for x in groups[-1]) + p.nbytes > max_bytes:
            groups.append([])
        groups[-1].append(p)
    weight_map: dict[str, str] = {}
    handles: dict[str, _Shard] = {}
    following = {a.name: b for a, b in itertools.pairwise(plans)}

    def handle(p: TensorPlan) -> _Shard:
        if p.file not in handles:
            handles[p.file] = _Shard(src / p.file)
        return handles[p.file]

    bar = tqdm(total=sum(p.nbytes for p in plans), unit="B", unit_scale=True, desc="slicing", disable=not progress)
    try:
        for k, group in enumerate(groups, 1):
            name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for p in group:
                header[p.name] = {"dtype": p.dtype, "shape": list(p.shape), "data_offsets": [offset, offset + p.nbytes]}
                offset += p.nbytes
                weight_map[p.name] = name
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)
            with open(out / name, "wb", buffering=0) as fh:
                fd = fh.fileno()
                _write_all(fd, memoryview(struct.pack("<Q", len(blob)) + blob))
                for p in group:
                    between()
                    shard = handle(p)
                    if (after := following.get(p.name)) is not None:  # the next tensor's first block, read ahead
                        nxt = handle(after)
                        for span in _spans(nxt, after)[0][:1]:
                            nxt.prefetch(*span)
                    written = 0
                    for block in _chunks(shard, p):
                        if isinstance(block, _Range):
                            _copy_range(shard.fd, fd, block.offset, block.nbytes)
                        else:
                            _write_all(fd, memoryview(block).cast("B"))
                        written += block.nbytes
                        bar.update(block.nbytes)
                    if written != p.nbytes:
                        raise RuntimeError(f"{p.name}: wrote {written} bytes, planned {p.nbytes}")
    finally:
        bar.close()
        for h in handles.values():
            h.close()
    index = {"metadata": {"total_size": sum(p.nbytes for p in plans), "total_parameters": sum(p.numel for p in plans)},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return len(groups)
