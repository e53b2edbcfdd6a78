#!/usr/bin/env python3
"""Turn scripts/bench.sh's raw measurements into one markdown table.

usage: report.py RESULTS_DIR

RESULTS_DIR/runs.tsv   fs op tool run seconds rss_kib extra_bytes   (one line per timed run)
RESULTS_DIR/meta.tsv   key value                                    (data sizes, n/a features)
RESULTS_DIR/ckpt.tsv   fs op run json                               (ckpt --json summaries)

Medians over runs; peak RSS is the maximum over runs. Targets are evaluated on medians.
"""

import json
import os
import statistics
import sys

RSS_LIMIT_KIB = 32 * 1024  # 32 MiB
DISK_LIMIT = 0.01  # archive's extra physical disk use <= 1% of the data
REFLINK_FACTOR = 1.5
CACHE_LIMIT = 256 << 20  # page cache a copy-path run may leave, per 4 GiB of data
ZSTD_IMPORT_SPEEDUP = 1.7  # ckpt import of its zstd archive vs zstd -dc | tar -x
LIST_LIMIT_S = 0.05  # ckpt list of its zstd archive

FS_NAMES = {
    "btrfs": "Btrfs",
    "xfs": "XFS",
    "ext4": "ext4",
    "many": "Btrfs, small files",
    "rss4": "Btrfs, 4x tree",
}


def tool_label(fs, op, tool):
    cp = "cp -a" if fs == "ext4" else "cp -a --reflink=always"
    labels = {
        ("export", "ckpt"): "ckpt export",
        ("export", "gnutar"): "GNU tar -cf",
        ("export", "bsdtar"): "bsdtar -cf",
        ("export", "cp"): cp,
        ("import", "ckpt"): "ckpt import",
        ("import", "gnutar"): "GNU tar -xf",
        ("import", "cp"): cp + " (export's runs)",
        ("pipe", "ckpt"): "ckpt export DIR - \\| wc -c",
        ("pipe", "gnutar"): "tar -cf - DIR \\| wc -c",
        ("zstd", "ckpt"): "ckpt export --compress zstd",
        ("zstd", "gnutar"): "tar -I 'zstd -T0' -cf",
        ("zstd-import", "ckpt"): "ckpt import (ckpt's zstd)",
        ("zstd-import", "zstdtar"): "zstd -dc \\| tar -x",
        ("zstd-list", "ckpt"): "ckpt list (ckpt's zstd)",
        ("zstd-list", "gnutar"): "tar -tf",
    }
    return labels[(op, tool)]


def load(res):
    runs = {}
    with open(os.path.join(res, "runs.tsv")) as f:
        for line in f:
            fs, op, tool, run, secs, rss, extra = line.rstrip("\n").split("\t")
            r = runs.setdefault((fs, op, tool), {"secs": [], "rss": [], "extra": []})
            r["secs"].append(float(secs))
            r["rss"].append(int(rss))
            r["extra"].append(int(extra) if extra not in ("", "-") else None)
    meta = {}
    p = os.path.join(res, "meta.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                meta[k] = v
    ckpt = []
    p = os.path.join(res, "ckpt.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                fs, op, run, js = line.rstrip("\n").split("\t", 3)
                try:
                    ckpt.append((fs, op, int(run), json.loads(js)))
                except ValueError:
                    pass
    cache = {}
    p = os.path.join(res, "cache.tsv")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                fs, op, tool, _run, resident = line.rstrip("\n").split("\t")
                cache.setdefault((fs, op, tool), []).append(int(resident))
    return runs, meta, ckpt, cache


def mib(b):
    return "%.1f MiB" % (b / 1048576)


def human(b):
    if b is None:
        return "–"
    if abs(b) >= 1 << 30:
        return "%.2f GiB" % (b / (1 << 30))
    return mib(b)


def fmt_s(x):
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x if x >= 1 else "%.3f" % x


def main():
    res = sys.argv[1]
    runs, meta, ckpt, cache = load(res)
    order = [f for f in ("btrfs", "xfs", "ext4", "many", "rss4") if any(k[0] == f for k in runs)]
    rows = []
    checks = []  # (description, ok or None)

    def stat(fs, op, tool):
        src = runs.get((fs, op, tool))
        if src is None and op == "import" and tool == "cp":
            src = runs.get((fs, "export", "cp"))
        return src

    def med(fs, op, tool):
        r = stat(fs, op, tool)
        return statistics.median(r["secs"]) if r else None

    for fs in order:
        ops = (("export", "import", "pipe", "zstd", "zstd-import", "zstd-list") if fs in ("btrfs", "xfs", "ext4")
               else ("export", "import"))
        data_bytes = int(meta.get("data_bytes." + fs, "0"))
        for op in ops:
            if fs in ("many", "rss4"):
                tools = ("ckpt", "gnutar") if fs == "many" else ("ckpt",)
            else:
                tools = {"export": ("ckpt", "gnutar", "bsdtar", "cp"), "import": ("ckpt", "gnutar", "cp"),
                         "pipe": ("ckpt", "gnutar"), "zstd": ("ckpt", "gnutar"),
                         "zstd-import": ("ckpt", "zstdtar"), "zstd-list": ("ckpt", "gnutar")}[op]
            if not any((fs, op, t) in runs for t in tools):
                continue  # case not run
            na = meta.get("na." + op.split("-")[0]) if op.startswith(("pipe", "zstd")) else None
            ck = med(fs, op, "ckpt")
            for tool in tools:
                r = stat(fs, op, tool)
                cells = {"fs": FS_NAMES[fs], "op": op, "tool": tool_label(fs, op, tool)}
                if r is None:
                    cells.update(med="n/a", range="n/a", rss="n/a", extra="n/a", ratio="n/a")
                else:
                    m = statistics.median(r["secs"])
                    cells["med"] = fmt_s(m)
                    cells["range"] = "%s–%s (%d)" % (fmt_s(min(r["secs"])), fmt_s(max(r["secs"])), len(r["secs"]))
                    cells["rss"] = "%.1f" % (max(r["rss"]) / 1024)
                    ex = [e for e in r["extra"] if e is not None]
                    cells["extra"] = human(statistics.median(ex)) if ex else "–"
                    if tool != "ckpt" and ck is not None:
                        cells["ratio"] = "%.2f" % (ck / m) if m > 0 else "inf"
                    else:
                        cells["ratio"] = "–" if tool == "ckpt" else "n/a"
                # Time targets, written on the peer's row.
                t_target = ""
                if tool == "cp" and fs in ("btrfs", "xfs") and op in ("export", "import"):
                    t_target = ("ckpt ≤ %.1fx" % REFLINK_FACTOR, REFLINK_FACTOR)
                elif tool == "gnutar" and (fs in ("ext4", "many") and op in ("export", "import")
                                           or op in ("pipe", "zstd")):
                    t_target = ("ckpt ≤ tar", 1.0)
                elif tool == "zstdtar" and op == "zstd-import":
                    t_target = ("ckpt ≥ %.1fx faster" % ZSTD_IMPORT_SPEEDUP, 1 / ZSTD_IMPORT_SPEEDUP)
                if t_target:
                    name, factor = t_target
                    desc = "%s %s: %s" % (FS_NAMES[fs], op, name)
                    if ck is None or r is None:
                        cells["time"] = "%s: n/a" % name + (" (%s)" % na if na else "")
                        checks.append((desc, None))
                    else:
                        ok = ck <= factor * statistics.median(r["secs"])
                        cells["time"] = "%s: %s" % (name, "PASS" if ok else "FAIL")
                        checks.append((desc, ok))
                elif tool == "ckpt" and op == "zstd-list":
                    name = "≤ %d ms" % (LIST_LIMIT_S * 1000)
                    desc = "%s zstd-list: ckpt list %s" % (FS_NAMES[fs], name)
                    ok = None if r is None else statistics.median(r["secs"]) <= LIST_LIMIT_S
                    cells["time"] = "%s: %s" % (name, {None: "n/a", True: "PASS", False: "FAIL"}[ok])
                    checks.append((desc, ok))
                else:
                    cells["time"] = ""
                # RSS target: every ckpt row.
                if tool == "ckpt":
                    if r is None:
                        cells["rss_t"] = "n/a"
                    else:
                        ok = max(r["rss"]) <= RSS_LIMIT_KIB
                        cells["rss_t"] = "PASS" if ok else "FAIL"
                        checks.append(("%s %s: ckpt peak RSS ≤ 32 MiB" % (FS_NAMES[fs], op), ok))
                else:
                    cells["rss_t"] = ""
                # Disk target: ckpt export on the reflink filesystems.
                cells["disk_t"] = ""
                if tool == "ckpt" and op == "export" and fs in ("btrfs", "xfs") and r is not None:
                    ex = [e for e in r["extra"] if e is not None]
                    if ex and data_bytes:
                        e = statistics.median(ex)
                        frac = e / data_bytes
                        cells["extra"] += " (%.2f%%)" % (100 * frac)
                        ok = frac <= DISK_LIMIT
                        cells["disk_t"] = "PASS" if ok else "FAIL"
                        checks.append(("%s export: archive's extra disk ≤ 1%% of data" % FS_NAMES[fs], ok))
                rows.append(cells)

    cols = [("fs", "FS"), ("op", "case"), ("tool", "tool"), ("med", "median s"), ("range", "min–max s (runs)"),
            ("rss", "peak RSS MiB"), ("extra", "extra disk (median)"), ("ratio", "ckpt/peer"),
            ("time", "time target"), ("rss_t", "RSS ≤ 32 MiB"), ("disk_t", "disk ≤ 1%")]
    print("| " + " | ".join(c[1] for c in cols) + " |")
    print("|" + "|".join("---" if k in ("fs", "op", "tool", "time") else "--:" for k, _ in cols) + "|")
    for cells in rows:
        print("| " + " | ".join(cells.get(k, "") for k, _ in cols) + " |")
    print()

    # Page cache a run leaves behind, on the copy path (ext4, zstd): ckpt within
    # CACHE_LIMIT per 4 GiB of data, GNU tar for comparison.
    cache_rows = [(k, statistics.median(v)) for k, v in sorted(cache.items()) if k[0] == "ext4" or k[1] == "zstd"]
    if cache_rows:
        print("Page cache left by a run (resident pages of the filesystem's files after it, median):")
        print()
        print("| FS | case | tool | resident | target |")
        print("|---|---|---|--:|---|")
        for (fs, op, tool), med in cache_rows:
            data_bytes = int(meta.get("data_bytes." + fs, "0"))
            target = ""
            if tool == "ckpt" and data_bytes:
                limit = CACHE_LIMIT * data_bytes / (4 << 30)
                ok = med <= limit
                target = ("PASS" if ok else "FAIL") + " (≤ %s)" % human(limit)
                checks.append(("%s %s: page cache left ≤ 256 MiB per 4 GiB" % (FS_NAMES[fs], op), ok))
            print("| %s | %s | %s | %s | %s |" % (FS_NAMES[fs], op, tool_label(fs, op, tool), human(med), target))
        print()

    passed = sum(1 for _, ok in checks if ok is True)
    failed = [d for d, ok in checks if ok is False]
    na = [d for d, ok in checks if ok is None]
    if "rss4" not in order:
        na.append("peak RSS on a 4x larger tree (run with --rss-scale)")
    print("Targets: %d PASS, %d FAIL, %d n/a." % (passed, len(failed), len(na)))
    for d in failed:
        print("- FAIL: " + d)
    for d in na:
        print("- n/a: " + d)
    for fs in order:
        v = meta.get("verify." + fs)
        if v:
            print("- %s: ckpt import of ckpt's archive vs the source tree: %s" % (FS_NAMES[fs], v))
    print()
    for key, label in (("na.pipe", "pipe"), ("na.zstd", "zstd")):
        if key in meta:
            print("- %s rows for ckpt are n/a: %s" % (label, meta[key]))
    sizes = ["%s %s (%s on disk)" % (FS_NAMES[fs], human(int(meta["apparent_bytes." + fs])),
                                     human(int(meta["data_bytes." + fs])))
             for fs in order if "data_bytes." + fs in meta and "apparent_bytes." + fs in meta]
    if sizes:
        print("- data: " + "; ".join(sizes))
    seen = set()
    for fs, op, run, js in ckpt:
        if (fs, op) in seen:
            continue
        seen.add((fs, op))
        print("- ckpt %s on %s: %s bytes, %s cloned, %s copied%s" % (
            op, FS_NAMES[fs], human(js.get("bytes", 0)), human(js.get("bytes_cloned", 0)),
            human(js.get("bytes_copied", 0)),
            ", archive %s" % human(js["archive_bytes"]) if "archive_bytes" in js else ""))
    for fs in order:
        streamed = [(label, meta.get("psize.%s.%s" % (fs, tool)))
                    for tool, label in (("ckpt", "ckpt export DIR -"), ("gnutar", "tar -cf - DIR"),
                                        ("gnutar-sparse", "tar --sparse -cf - DIR"))]
        if any(n for _, n in streamed):
            print("- %s bytes a pipe carries: %s" % (FS_NAMES[fs], ", ".join(
                "%s %s" % (label, human(int(n))) for label, n in streamed if n)))
    for fs in order:
        for op in ("zstd",):
            for tool in ("ckpt", "gnutar"):
                k = "zsize.%s.%s" % (fs, tool)
                if k in meta:
                    print("- %s zstd archive by %s: %s" % (FS_NAMES[fs], tool, human(int(meta[k]))))


if __name__ == "__main__":
    main()
