#!/usr/bin/env python3
"""Generate a deterministic synthetic file tree for driftwatch memory benchmarks.

Default: 450 directories x 1000 files = 450,000 files of 0-4 KiB each
(about 0.9 GiB of content), i.e. roughly 4x the number of files in a
typical /usr. The content of every file is pseudo-random but fully
determined by --seed and the file's index, so two trees generated with the
same parameters are byte-for-byte identical (mtimes aside).

The tree is written to DEST/ and a marker file DEST.complete (next to the
tree, so the tree holds exactly dirs x files files) records the parameters;
if the marker exists with the same parameters, nothing is done (the tree is
reused). Use --force to regenerate.

Only the standard library is used; files are written with os.open/os.write
and the work is split across --jobs processes (default 2).
"""

import argparse
import json
import os
import random
import shutil
import sys
import time
from multiprocessing import Pool

MARKER_SUFFIX = ".complete"
POOL_SIZE = 8 << 20  # 8 MiB pool of random bytes that file contents are sliced from
POOL = b""


def _init_pool(seed: int) -> None:
    global POOL
    POOL = random.Random(seed).randbytes(POOL_SIZE)


def _mix(x: int) -> int:
    """splitmix64 finaliser: cheap, deterministic, well distributed."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _make_dir(args):
    dest, d, files, max_size, seed = args
    dirpath = os.path.join(dest, f"d{d:04d}")
    os.makedirs(dirpath, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    pool = POOL
    limit = len(pool) - max_size - 1
    total = 0
    for f in range(files):
        idx = d * files + f
        h = _mix(idx ^ (seed << 32))
        size = h % (max_size + 1)
        off = (h >> 20) % limit
        # The index prefix makes every non-trivial file's content unique.
        data = (idx.to_bytes(8, "little") + pool[off : off + size])[:size]
        fd = os.open(os.path.join(dirpath, f"f{f:04d}"), flags, 0o644)
        try:
            if data:
                os.write(fd, data)
        finally:
            os.close(fd)
        total += size
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="directory to create the tree in")
    ap.add_argument("--dirs", type=int, default=450)
    ap.add_argument("--files", type=int, default=1000, help="files per directory")
    ap.add_argument("--max-size", type=int, default=4096, help="max file size in bytes")
    ap.add_argument("--seed", type=int, default=20240501)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="regenerate even if complete")
    a = ap.parse_args()

    params = {
        "dirs": a.dirs,
        "files": a.files,
        "max_size": a.max_size,
        "seed": a.seed,
        "version": 1,
    }
    marker = os.path.normpath(a.dest) + MARKER_SUFFIX
    if not a.force and os.path.exists(marker):
        try:
            with open(marker) as fh:
                if json.load(fh).get("params") == params:
                    print(f"make_tree: reusing existing tree at {a.dest}", file=sys.stderr)
                    return 0
        except (OSError, ValueError):
            pass
    if os.path.exists(marker):
        os.unlink(marker)
    if os.path.exists(a.dest):
        shutil.rmtree(a.dest)
    os.makedirs(a.dest)

    t0 = time.monotonic()
    work = [(a.dest, d, a.files, a.max_size, a.seed) for d in range(a.dirs)]
    if a.jobs > 1:
        with Pool(a.jobs, initializer=_init_pool, initargs=(a.seed,)) as pool:
            total = sum(pool.imap_unordered(_make_dir, work, chunksize=4))
    else:
        _init_pool(a.seed)
        total = sum(map(_make_dir, work))
    elapsed = time.monotonic() - t0

    with open(marker, "w") as fh:
        json.dump({"params": params, "files": a.dirs * a.files, "bytes": total}, fh)
        fh.write("\n")
    print(
        f"make_tree: wrote {a.dirs * a.files} files, {total} bytes "
        f"to {a.dest} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
