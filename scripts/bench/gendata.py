#!/usr/bin/env python3
"""Deterministic generator of benchmark trees for scripts/bench.sh.

Two shapes:

  checkpoint  (default) a container-checkpoint-shaped tree of --size apparent bytes:
              checkpoint/        CRIU-like images: pages-1.img (a quarter of --size, sparse,
                                 half holes), a few hundred small *.img files
              rootfs-diff/       ~2000 small files of 1-20 KB in nested dirs, eight large
                                 files (the rest of --size, unaligned sizes), symlinks
                                 (relative, absolute, dangling, to directories), hardlinks
              config.dump, spec.dump, ...
  many        --count files of 0-8 KB in directories of 100 (metadata-bound).

--scale K multiplies every count (small files, images, links) by K; use it with K times
the size for a "K times larger tree".

Content is AES-128-CTR keystream from `openssl enc` (fast, deterministic for a given --seed),
mixed per 1 MiB chunk so the tree is partly compressible like real memory pages:
  50% random bytes (incompressible), 25% low-entropy bytes (16 symbols, ~2x with zstd),
  25% pages whose first 512 bytes are random and the rest zero.
Same arguments => byte-identical tree (contents, sizes, holes, modes, mtimes).
"""

import argparse
import fcntl
import os
import subprocess
import sys

MIB = 1 << 20
PAGE = 4096
MTIME = 1_700_000_000  # fixed mtimes: the tree is identical across runs
F_SETPIPE_SZ = 1031

# 16-symbol alphabet, mostly printable: low-entropy "text/struct" bytes.
LOW_TABLE = bytes(b"\x00\x01\x02\x03\x10\x20 ./0123aeis"[i % 16] for i in range(256))


class Stream:
    """A deterministic pseudo-random byte stream (AES-CTR keystream of zeros)."""

    def __init__(self, seed):
        key = (b"ckpt-bench-%d" % seed).ljust(16, b"\0")[:16].hex()
        self.proc = subprocess.Popen(
            ["openssl", "enc", "-aes-128-ctr", "-nosalt", "-bufsize", str(MIB), "-K", key, "-iv", "00" * 16,
             "-in", "/dev/zero"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, MIB)
        except OSError:
            pass
        self.buf = b""

    def read(self, n):
        out = bytearray(n)
        mv = memoryview(out)
        got = 0
        while got < n:
            k = self.proc.stdout.readinto(mv[got:])
            if not k:
                raise RuntimeError("openssl keystream ended")
            got += k
        return out

    def close(self):
        self.proc.kill()
        self.proc.wait()


class Rng:
    """Small deterministic PRNG for shapes (sizes, names); content comes from Stream."""

    def __init__(self, seed):
        self.x = (seed * 6364136223846793005 + 1442695040888963407) & (2**64 - 1) or 1

    def next(self):
        # xorshift64*
        x = self.x
        x ^= x >> 12
        x ^= (x << 25) & (2**64 - 1)
        x ^= x >> 27
        self.x = x
        return (x * 2685821657736338717) & (2**64 - 1)

    def randint(self, lo, hi):  # inclusive
        return lo + self.next() % (hi - lo + 1)


def mixed(stream, n, index):
    """n bytes of chunk `index` in the 50/25/25 mix."""
    raw = stream.read(n)
    kind = ((index * 2654435761) >> 7) % 8
    if kind < 4:
        return raw
    if kind < 6:
        return raw.translate(LOW_TABLE)
    out = bytearray(n)
    for off in range(0, n, PAGE):
        out[off:off + 512] = raw[off:off + 512]
    return out


def text(stream, n):
    return bytes(stream.read(n).translate(LOW_TABLE))


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_large(path, size, stream, chunk_base):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off, i = 0, 0
        while off < size:
            n = min(MIB, size - off)
            os.write(fd, mixed(stream, n, chunk_base + i))
            off += n
            i += 1
    finally:
        os.close(fd)
    return chunk_base + i


def write_sparse(path, size, stream, rng, chunk_base):
    """`size` apparent bytes, about half of them holes, in runs of 64 KiB-8 MiB."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    i = chunk_base
    try:
        off = 0
        data = True
        while off < size:
            run = min(rng.randint(16, 2048) * PAGE, size - off)
            if data:
                end = off + run
                while off < end:
                    n = min(MIB, end - off)
                    os.pwrite(fd, mixed(stream, n, i), off)
                    off += n
                    i += 1
            else:
                off += run
            data = not data
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return i


def checkpoint_tree(root, size, scale, stream, rng):
    ck = os.path.join(root, "checkpoint")
    rf = os.path.join(root, "rootfs-diff")
    os.makedirs(ck)
    os.makedirs(rf)
    files = []  # (path, bytes) of small regular files, for links

    # Podman-ish top-level metadata.
    for name, n in (("config.dump", 6000), ("spec.dump", 9000), ("network.status", 300),
                    ("stats-dump", 200), ("deleted.files", 40), ("ctr.log", 2500)):
        write_file(os.path.join(root, name), text(stream, n))

    # A few hundred small CRIU image files, 64 B-16 KB.
    write_file(os.path.join(ck, "inventory.img"), stream.read(58))
    kinds = ("core", "pagemap", "mm", "fdinfo", "ids", "fs", "tty-info", "timens", "utsns", "ipcns-var")
    nimg = 30 * scale
    small_image_bytes = 58
    for pid in range(1, nimg + 1):
        for k in kinds:
            n = rng.randint(64, 16384)
            write_file(os.path.join(ck, "%s-%d.img" % (k, pid)), stream.read(n))
            small_image_bytes += n

    # About 2000 small files of 1-20 KB in nested directories.
    nsmall = 2000 * scale
    small_bytes = 0
    for j in range(nsmall):
        d = os.path.join(rf, "usr", "share", "pkg%03d" % (j % (40 * scale)), "sub%d" % (j % 3))
        os.makedirs(d, exist_ok=True)
        n = rng.randint(1024, 20480)
        p = os.path.join(d, "file%05d.%s" % (j, ("conf", "py", "so", "txt", "json")[j % 5]))
        write_file(p, text(stream, n) if j % 2 else stream.read(n), 0o755 if j % 7 == 0 else 0o644)
        files.append(p)
        small_bytes += n

    # The big ones: a quarter of the size is the sparse pages image, the rest eight large files.
    chunk = 0
    pages_size = max((size // 4) // PAGE * PAGE, PAGE)
    chunk = write_sparse(os.path.join(ck, "pages-1.img"), pages_size, stream, rng, chunk)
    rest = max(size - pages_size - small_bytes - small_image_bytes, 8 * MIB)
    weights = (30, 20, 15, 10, 10, 6, 5, 4)
    big = os.path.join(rf, "var", "lib", "app")
    os.makedirs(big)
    large = []
    for k, w in enumerate(weights):
        n = max(rest * w // 100 - 1000 * (k + 1) - k * 7, 1)  # unaligned sizes
        p = os.path.join(big, "blob-%d.dat" % k)
        chunk = write_large(p, n, stream, chunk)
        large.append(p)

    # Symlinks: relative to files, absolute, dangling, to directories.
    ln = os.path.join(rf, "links")
    os.makedirs(ln)
    for j in range(60 * scale):
        target = files[rng.randint(0, len(files) - 1)]
        kind = j % 4
        if kind == 0:
            t = os.path.relpath(target, ln)
        elif kind == 1:
            t = "/" + os.path.relpath(target, root)
        elif kind == 2:
            t = "../missing/nowhere-%d" % j
        else:
            t = os.path.relpath(os.path.dirname(target), ln)
        os.symlink(t, os.path.join(ln, "l%04d" % j))

    # Hardlinks: to small files and to one large file.
    hl = os.path.join(rf, "hardlinks")
    os.makedirs(hl)
    for j in range(40 * scale):
        os.link(files[(j * 37) % len(files)], os.path.join(hl, "h%04d" % j))
    os.link(large[-1], os.path.join(hl, "blob-hardlink.dat"))

    # Empty file and empty directory.
    write_file(os.path.join(rf, "empty"), b"")
    os.makedirs(os.path.join(rf, "var", "empty"))


def many_tree(root, count, stream, rng):
    per_dir = 100
    for j in range(count):
        d = os.path.join(root, "d%03d" % (j // (per_dir * 100)), "d%05d" % (j // per_dir))
        if j % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        n = rng.randint(0, 8192)
        write_file(os.path.join(d, "f%06d" % j), text(stream, n) if j % 2 else stream.read(n))


def fix_mtimes(root):
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
        for name in dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def parse_size(s):
    s = s.strip()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s[-1:].upper() in mult:
        return int(float(s[:-1]) * mult[s[-1:].upper()])
    return int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="directory to create (must not exist)")
    ap.add_argument("--shape", choices=("checkpoint", "many"), default="checkpoint")
    ap.add_argument("--size", default="4G", help="apparent size of the checkpoint tree (K/M/G suffixes)")
    ap.add_argument("--scale", type=int, default=1, help="multiply file counts by this")
    ap.add_argument("--count", type=int, default=100000, help="files for --shape many")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    os.umask(0o022)
    os.makedirs(a.root)
    stream = Stream(a.seed)
    rng = Rng(a.seed)
    try:
        if a.shape == "checkpoint":
            checkpoint_tree(a.root, parse_size(a.size), a.scale, stream, rng)
        else:
            many_tree(a.root, a.count, stream, rng)
    finally:
        stream.close()
    fix_mtimes(a.root)


if __name__ == "__main__":
    sys.exit(main())
