#!/usr/bin/env python3
"""Interoperability helper for ckpt's tests, using only Python's tarfile.

Usage:
  readtar.py list [--offsets] ARCHIVE      one canonical line per member
  readtar.py members [--nested MEMBER] [--text MEMBER] ARCHIVE
                                           the members as JSON (see members below)
  readtar.py scan DIR                      the same canonical lines for a directory tree
  readtar.py write --format pax|gnu SRC_DIR ARCHIVE
                                           write an archive of SRC_DIR (members "./...",
                                           byte-wise order; pax: nanosecond mtimes and
                                           SCHILY.xattr records, names escaped as GNU tar does)
  readtar.py extract ARCHIVE DEST_DIR      tarfile.extractall (filter='fully_trusted'
                                           where this Python has extraction filters)

Canonical line (fields separated by one TAB, identical to readtar.go):
  name type mode uid gid size mtime linkname devmajor devminor xattrs sha256 [offset]

- name, linkname: raw bytes, with bytes <= 0x20, 0x7f..0xff, '\\', '=' and ',' written
  as \\xNN (xattr names likewise); a trailing "/" is removed from names ("./" becomes ".")
- type: the typeflag character ('\\0' and 'S' are reported as '0')
- mode: 4 octal digits (mode & 0o7777)
- mtime: SECONDS.NANOSECONDS (9 digits), from the PAX record when there is one
- devmajor/devminor: 0 unless the member is a character or block device
- xattrs: "-" or comma-separated NAME=HEX sorted by (escaped) NAME: from the
  LIBARCHIVE.xattr.* records when the member has any (bsdtar), else from SCHILY.xattr.*
  with GNU tar's "%3D"/"%25" escapes of '='/'%' in names undone (see member_xattrs)
- sha256: hex digest of the member's data for regular members, "-" otherwise
- offset (with --offsets): archive offset of the member's data (TarInfo.offset_data)

`members` prints one JSON object: "members", a list of {"name", "offset" (of the data),
"size", "type" (the typeflag character, '\0' reported as '0'), "linkname", "pax" (the
sorted keys of the member's pax records)} as tarfile reports them; "nested", the same list
for the archive held by member MEMBER (offsets counted from the start of the outer
archive), or null when there is no such member; "text", the data of member MEMBER as
UTF-8, or null.

`scan` reports a hardlinked regular file as an ordinary regular file under every
name; the tests normalise archive listings the same way before comparing.
Any error prints a message on stderr and exits with status 1.
"""

import base64
import decimal
import hashlib
import json
import os
import stat
import sys
import tarfile
import urllib.parse

XATTR_PREFIX = "SCHILY.xattr."
LIBARCHIVE_PREFIX = "LIBARCHIVE.xattr."
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.GNUTYPE_SPARSE, tarfile.CONTTYPE)


def esc(raw: bytes) -> str:
    out = []
    for c in raw:
        if c <= 0x20 or c >= 0x7F or c in b"\\=,":
            out.append("\\x%02x" % c)
        else:
            out.append(chr(c))
    return "".join(out)


def to_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def canon_name(name: bytes) -> bytes:
    while len(name) > 1 and name.endswith(b"/"):
        name = name[:-1]
    return name


def pax_time(value: str):
    d = decimal.Decimal(value)
    sec = int(d.to_integral_value(rounding=decimal.ROUND_FLOOR))
    frac = (d - sec).scaleb(9).to_integral_value(rounding=decimal.ROUND_DOWN)
    return sec, int(frac)


def fmt_xattrs(pairs) -> str:
    items = sorted((esc(k), v.hex()) for k, v in pairs)
    if not items:
        return "-"
    return ",".join("%s=%s" % kv for kv in items)


def line(name, typ, mode, uid, gid, size, sec, nsec, link, major, minor, xattrs, digest):
    return "\t".join(
        [
            esc(canon_name(name)),
            typ,
            "%04o" % (mode & 0o7777),
            str(uid),
            str(gid),
            str(size),
            "%d.%09d" % (sec, nsec),
            esc(link),
            str(major),
            str(minor),
            xattrs,
            digest,
        ]
    )


def gnu_decode(name: bytes) -> bytes:
    """Undoes GNU tar's escaping of xattr names in SCHILY.xattr keywords (xheader.c
    xattr_decode_keyword): "%3D" is '=', "%25" is '%', nothing else."""
    out, i = bytearray(), 0
    while i < len(name):
        if name[i : i + 3] == b"%3D":
            out += b"="
            i += 3
        elif name[i : i + 3] == b"%25":
            out += b"%"
            i += 3
        else:
            out.append(name[i])
            i += 1
    return bytes(out)


def gnu_encode(name: bytes) -> bytes:
    return name.replace(b"%", b"%25").replace(b"=", b"%3D")


def member_xattrs(pax: dict) -> dict:
    """libarchive (bsdtar) writes every xattr twice, as LIBARCHIVE.xattr.URLENCODED=BASE64
    and SCHILY.xattr.URLENCODED=VALUE, and reads the former when present; GNU tar writes
    SCHILY.xattr.NAME with only '=' and '%' escaped. So: the LIBARCHIVE.xattr records when a
    member has any, the SCHILY.xattr ones otherwise."""
    res = {}
    for k, v in pax.items():
        if k.startswith(LIBARCHIVE_PREFIX):
            name = urllib.parse.unquote_to_bytes(to_bytes(k[len(LIBARCHIVE_PREFIX) :]))
            raw = to_bytes(v).rstrip(b"=")
            res[name] = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    if res:
        return res
    for k, v in pax.items():
        if k.startswith(XATTR_PREFIX):
            res[gnu_decode(to_bytes(k[len(XATTR_PREFIX) :]))] = to_bytes(v)
    return res


def list_archive(path: str, offsets: bool) -> None:
    out = sys.stdout
    with tarfile.open(path, "r:", errorlevel=2) as tf:
        for m in tf:
            _ = m  # members are listed below, after the end-of-archive check
        check_end(path, tf.offset)
        for m in tf.getmembers():
            typ = m.type.decode("latin-1")
            if m.type in (tarfile.AREGTYPE, tarfile.GNUTYPE_SPARSE):
                typ = "0"
            digest = "-"
            if m.type in REGULAR:
                h = hashlib.sha256()
                f = tf.extractfile(m)
                n = 0
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    n += len(chunk)
                    h.update(chunk)
                if n != m.size:
                    raise RuntimeError("%r: read %d bytes, header says %d" % (m.name, n, m.size))
                digest = h.hexdigest()
            if "mtime" in m.pax_headers:
                sec, nsec = pax_time(m.pax_headers["mtime"])
            else:
                sec, nsec = int(m.mtime), 0
            major = minor = 0
            if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                major, minor = m.devmajor, m.devminor
            xattrs = fmt_xattrs(member_xattrs(m.pax_headers).items())
            text = line(
                to_bytes(m.name) + (b"/" if m.isdir() else b""),
                typ,
                m.mode,
                m.uid,
                m.gid,
                m.size,
                sec,
                nsec,
                to_bytes(m.linkname),
                major,
                minor,
                xattrs,
                digest,
            )
            if offsets:
                text += "\t%d" % m.offset_data
            out.write(text + "\n")


def json_members(tf) -> list:
    def typ(m):
        t = m.type.decode("latin-1")
        return "0" if t == "\x00" else t

    return [
        {
            "name": m.name,
            "offset": m.offset_data,
            "size": m.size,
            "type": typ(m),
            "linkname": m.linkname,
            "pax": sorted(m.pax_headers.keys()),
        }
        for m in tf
    ]


def members(path: str, nested, text) -> None:
    out = {"members": [], "nested": None, "text": None}
    with tarfile.open(path, "r:") as tf:
        out["members"] = json_members(tf)
        for m in tf.getmembers():
            if m.name == nested:
                with tarfile.open(fileobj=tf.extractfile(m), mode="r:") as inner:
                    out["nested"] = json_members(inner)
                for n in out["nested"]:
                    n["offset"] += m.offset_data
            if m.name == text:
                out["text"] = tf.extractfile(m).read().decode("utf-8")
    sys.stdout.write(json.dumps(out) + "\n")


def check_end(path: str, offset: int) -> None:
    """tarfile ends its iteration silently at a corrupt header after the first member:
    insist that the archive really ends with zero blocks there."""
    with open(path, "rb") as f:
        f.seek(offset)
        rest = f.read()
    if len(rest) < 1024 or rest.strip(b"\0"):
        raise RuntimeError(
            "no end-of-archive (two zero blocks, then only zeros) at offset %d" % offset
        )


def lxattrs(path: bytes):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    return [(to_bytes(n), os.getxattr(path, n, follow_symlinks=False)) for n in names]


def scan(root: str) -> None:
    root_b = os.fsencode(root)
    rows = []

    def visit(rel: bytes):
        path = os.path.join(root_b, rel) if rel != b"." else root_b
        st = os.lstat(path)
        mode = st.st_mode
        digest, size, link, major, minor = "-", 0, b"", 0, 0
        if stat.S_ISREG(mode):
            typ = "0"
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
            digest, size = h.hexdigest(), st.st_size
        elif stat.S_ISDIR(mode):
            typ = "5"
        elif stat.S_ISLNK(mode):
            typ, link = "2", os.readlink(path)
        elif stat.S_ISCHR(mode):
            typ, major, minor = "3", os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISBLK(mode):
            typ, major, minor = "4", os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            typ = "6"
        else:
            return  # sockets and the like cannot be archived
        name = b"./" + rel if rel != b"." else b"."
        rows.append(
            (
                name,
                line(
                    name,
                    typ,
                    mode,
                    st.st_uid,
                    st.st_gid,
                    size,
                    st.st_mtime_ns // 10**9,
                    st.st_mtime_ns % 10**9,
                    link,
                    major,
                    minor,
                    fmt_xattrs(lxattrs(path)),
                    digest,
                ),
            )
        )
        if stat.S_ISDIR(mode):
            for child in os.listdir(path):
                visit(child if rel == b"." else os.path.join(rel, child))

    visit(b".")
    rows.sort()
    sys.stdout.write("".join(r + "\n" for _, r in rows))


def write(fmt: str, src: str, dst: str) -> None:
    src_b = os.fsencode(src)
    paths = [b"."]
    for dirpath, dirnames, filenames in os.walk(src_b):
        rel = os.path.relpath(dirpath, src_b)
        for n in dirnames + filenames:
            paths.append(os.path.join(rel, n) if rel != b"." else n)
    names = sorted(b"./" + p if p != b"." else b"." for p in paths)
    form = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}[fmt]
    with tarfile.open(dst, "w", format=form) as tf:
        for name in names:
            path = os.path.join(src_b, name)
            ti = tf.gettarinfo(os.fsdecode(path), arcname=os.fsdecode(name))
            if ti is None:
                continue  # socket
            st = os.lstat(path)
            ti.mtime = st.st_mtime_ns // 10**9  # a float would be rounded, not truncated
            if fmt == "pax":
                ti.pax_headers["mtime"] = "%d.%09d" % divmod(st.st_mtime_ns, 10**9)
                for k, v in lxattrs(path):
                    key = XATTR_PREFIX + gnu_encode(k).decode("utf-8", "surrogateescape")
                    ti.pax_headers[key] = v.decode(
                        "utf-8", "surrogateescape"
                    )
            if ti.isreg():
                with open(path, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)


def extract(archive: str, dest: str) -> None:
    with tarfile.open(archive, "r:", errorlevel=2) as tf:
        if hasattr(tarfile, "fully_trusted_filter"):
            tf.extractall(dest, numeric_owner=True, filter="fully_trusted")
        else:
            tf.extractall(dest, numeric_owner=True)


def main(argv) -> int:
    try:
        if len(argv) == 2 and argv[0] == "list":
            list_archive(argv[1], False)
        elif len(argv) == 3 and argv[0] == "list" and argv[1] == "--offsets":
            list_archive(argv[2], True)
        elif len(argv) >= 2 and argv[0] == "members":
            opts, rest = {"--nested": None, "--text": None}, argv[1:]
            while len(rest) > 2 and rest[0] in opts:
                opts[rest[0]], rest = rest[1], rest[2:]
            if len(rest) != 1:
                sys.stderr.write(__doc__)
                return 2
            members(rest[0], opts["--nested"], opts["--text"])
        elif len(argv) == 2 and argv[0] == "scan":
            scan(argv[1])
        elif len(argv) == 5 and argv[0] == "write" and argv[1] == "--format":
            write(argv[2], argv[3], argv[4])
        elif len(argv) == 3 and argv[0] == "extract":
            extract(argv[1], argv[2])
        else:
            sys.stderr.write(__doc__)
            return 2
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way
        sys.stderr.write("readtar.py: %s: %s\n" % (type(e).__name__, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
