"""MatFormer slicing at full size: a random bf16 E4B-shaped checkpoint (text + towers, ~16 GB) sliced to E2B.

    python bench/slicing.py                          # needs 40 GB free disk; 2 interleaved repeats
    python bench/slicing.py --dir /big/disk --repeats 3 --write

The parent is built from the real Gemma 3n config (transformers' default `Gemma3nConfig`, which is
E4B) and the tensor list of Google's checkpoint (`matformer.e4b_reference`, incl. the K/V projections
it stores for KV-shared layers), written shard by shard straight to disk from one 64 MiB block of
random bf16 values: it is never in memory. Then, interleaved, in child processes:
- slice: `slice_checkpoint(src, out, "e2b")`, peak RSS = the child's own high-water mark (wait4);
- copy (read/write): a plain userspace copy of the same number of bytes the child holds;
- copy (copy_file_range): the same bytes copied in the kernel, as `cp` does.
Each run starts with the parent's pages dropped from the page cache (posix_fadvise DONTNEED) and ends
with its output fsync'ed, so every run reads from disk and is timed to durable output. Every file is
deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from common import Series, interleaved, last_json, peak_rss_self, ratio, report, run_child, table

NEEDED_FREE = 40 * 10**9
SHARD_BYTES = 5 * 10**9
BLOCK_BYTES = 64 << 20


def build_parent(folder: Path) -> tuple[int, int]:
    """Write the E4B-shaped checkpoint; returns (bytes, shard count)."""
    import numpy as np

    from krishna_ai.matformer import DTYPE_BYTES, e4b_reference

    config, tensors = e4b_reference()
    config = {**config, "architectures": ["Gemma3nForConditionalGeneration"], "dtype": "bfloat16"}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(0)
    values = rng.standard_normal(BLOCK_BYTES // 2, dtype=np.float32) * 0.02
    block = memoryview((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())  # bf16 = the top 16 bits
    groups: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
    for name, (_, dtype, shape) in sorted(tensors.items()):
        nbytes = DTYPE_BYTES[dtype]
        for d in shape:
            nbytes *= d
        if groups[-1] and sum(x[2] for x in groups[-1]) + nbytes > SHARD_BYTES:
            groups.append([])
        groups[-1].append((name, shape, nbytes))
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, nbytes in group:
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(folder / fname, "wb", buffering=0) as fh:
            fh.write(struct.pack("<Q", len(blob)) + blob)
            for _, _, nbytes in group:
                left = nbytes
                while left:
                    view = block[: min(left, len(block))]
                    while view:
                        view = view[fh.write(view):]
                    left -= min(left, len(block))
            os.fsync(fh.fileno())
        total += offset
        print(f"  wrote {fname} ({offset / 1e9:.2f} GB)", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}, indent=2))
    return total, len(groups)


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def drop_cache(folder: Path) -> None:
    for f in shards(folder):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the next run starts cold too
            finally:
                os.close(fd)


def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def child_slice(src: Path, out: Path) -> int:
    from krishna_ai.matformer import slice_checkpoint

    base = rss_now()
    t0 = time.perf_counter()
    report = slice_checkpoint(src, out, "e2b", progress=False)
    fsync_tree(out)
    import resource

    # the loadability check runs in its own child process (torch + the child built on the meta device)
    check_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": report.child_bytes, "base_rss": base,
                      "peak_rss": peak_rss_self(), "check_rss": check_rss}))
    return 0


def child_copy(src: Path, out: Path, nbytes: int, kernel: bool) -> int:
    """Copy the first `nbytes` of the parent's shards, in order, into files of the same sizes."""
    base = rss_now()
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    left = nbytes
    buf = bytearray(BLOCK_BYTES)
    for f in shards(src):
        if not left:
            break
        count = min(left, f.stat().st_size)
        with open(f, "rb", buffering=0) as fin, open(out / f.name, "wb", buffering=0) as fout:
            done = 0
            while done < count:
                if kernel:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), count - done)
                else:
                    n = fin.readinto(memoryview(buf)[: min(len(buf), count - done)])
                    view = memoryview(buf)[:n]
                    while view:
                        view = view[fout.write(view):]
                if n <= 0:
                    raise RuntimeError(f"{f}: short read")
                done += n
        left -= count
    fsync_tree(out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": nbytes - left, "base_rss": base,
                      "peak_rss": peak_rss_self()}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="work folder on the disk to test (default: a new temp folder)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep-parent", action="store_true",
                    help="keep the built parent in --dir (and reuse one found there) instead of deleting it")
    ap.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, src, out, *rest = args.child
        if kind == "slice":
            return child_slice(Path(src), Path(out))
        return child_copy(Path(src), Path(out), int(rest[0]), kernel=kind == "kernel")

    work = Path(args.dir or tempfile.mkdtemp(prefix="krishna-slicing-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "e4b-random"
    reuse = args.keep_parent and (src / "model.safetensors.index.json").is_file()
    free = shutil.disk_usage(work).free
    print(f"free disk at {work}: {free / 1e9:.1f} GB", file=sys.stderr)
    if free < NEEDED_FREE - (16 * 10**9 if reuse else 0):
        print(f"skipped: the benchmark needs {NEEDED_FREE / 1e9:.0f} GB free at {work} (parent ~16 GB, child "
              f"~12 GB, one copy ~12 GB); {free / 1e9:.1f} GB are free. Give --dir on a larger disk.")
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    from krishna_ai.matformer import plan_slice

    s = {k: Series(k, "s") for k in ("slice", "copy", "kernel")}
    rss = {k: Series(k, "MiB") for k in s}
    base = {k: Series(k, "MiB") for k in s}
    check_rss = Series("check", "MiB")
    try:
        t0 = time.perf_counter()
        if reuse:
            parent_bytes, n_shards = sum(f.stat().st_size for f in shards(src)), len(shards(src))
        else:
            shutil.rmtree(src, ignore_errors=True)
            parent_bytes, n_shards = build_parent(src)
        build_s = time.perf_counter() - t0
        child_bytes = plan_slice("e2b", src).child_bytes
        print(f"parent {parent_bytes / 1e9:.2f} GB in {n_shards} shards, built in {build_s:.0f} s; "
              f"e2b child {child_bytes / 1e9:.2f} GB", file=sys.stderr)

        def step(kind: str) -> None:
            out = work / f"out-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            drop_cache(src)
            argv = [sys.executable, "bench/slicing.py", "--child", kind, str(src), str(out), str(child_bytes)]
            code, _, _, stdout = run_child(argv)
            if code != 0:
                raise RuntimeError(f"{kind} failed with exit code {code}:\n{stdout[-2000:]}")
            res = last_json(stdout)
            s[kind].add(res["seconds"])
            rss[kind].add(res["peak_rss"] / 2**20)  # the child's own VmHWM (see common.run_child)
            base[kind].add(res["base_rss"] / 2**20)
            if "check_rss" in res:
                check_rss.add(res["check_rss"] / 2**20)
            shutil.rmtree(out, ignore_errors=True)

        interleaved({k: (lambda k=k: step(k)) for k in s}, args.repeats)
    finally:
        if not args.keep_parent:
            shutil.rmtree(src, ignore_errors=True)
        for out in work.glob("out-*"):
            shutil.rmtree(out, ignore_errors=True)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    def gbps(series: Series) -> str:
        return f"{child_bytes / series.median / 1e9:.2f}" if series.values else "–"

    rows = [
        ["`slice_checkpoint(src, out, \"e2b\")`", s["slice"].cell("{:.1f}"), gbps(s["slice"]),
         f"{ratio(s['slice'], s['kernel']):.2f} / {ratio(s['slice'], s['copy']):.2f}", "≤ 1.25",
         rss["slice"].cell("{:.0f}"), base["slice"].cell("{:.0f}"), "≤ 1536"],
        ["plain copy, userspace read/write (64 MiB buffer)", s["copy"].cell("{:.1f}"), gbps(s["copy"]), "", "",
         rss["copy"].cell("{:.0f}"), base["copy"].cell("{:.0f}"), ""],
        ["plain copy, `copy_file_range` (as `cp`)", s["kernel"].cell("{:.1f}"), gbps(s["kernel"]), "", "",
         rss["kernel"].cell("{:.0f}"), base["kernel"].cell("{:.0f}"), ""],
    ]
    body = (f"Parent: random bf16, E4B-shaped (text + vision + audio towers), {parent_bytes / 1e9:.2f} GB in "
            f"{n_shards} shards, {'reused from --dir' if reuse else f'written in {build_s:.0f} s'}. "
            f"Child: `e2b`, {child_bytes / 1e9:.2f} GB; the copies "
            f"move the same number of bytes. Free disk before: {free / 1e9:.0f} GB. {args.repeats} interleaved "
            "repeats, each from a cold page cache to fsync'ed output. Cells: median [min–max].\n\n"
            + table(["run", "seconds", "GB/s written", "time ratio (vs cp / vs read-write)", "target",
                     "peak RSS (MiB)", "RSS at start (MiB)", "target"], rows) + "\n\n"
            f"The slicer's check that transformers can load the child runs in a process of its own while the "
            f"bytes stream; its peak RSS: {check_rss.cell('{:.0f}')} MiB, to add to the slicer's for the total.\n")
    report("slicing", "MatFormer slicing E4B → E2B at full size", body, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
