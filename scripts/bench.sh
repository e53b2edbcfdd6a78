#!/usr/bin/env bash
# Benchmark ckpt against GNU tar, bsdtar and cp on Btrfs, XFS and ext4 (issue P4).
#
# What it does (as root, unattended):
#   * builds target/release/ckpt (cargo build --release) unless --ckpt BIN is given, and
#     installs missing tools (time btrfs-progs xfsprogs e2fsprogs libarchive-tools zstd
#     openssl python3);
#   * for each filesystem, a loop image under --work (default /var/tmp/ckpt-bench), mkfs'd and
#     mounted on a loop device with direct I/O (so the host page cache does not cache the image
#     twice and dropping caches really sends reads to the disk): "btrfs", "xfs", and "ext4"
#     (an ext4 image rather than a host directory, so the free-space measure is exact);
#   * generates a deterministic checkpoint-shaped tree of --size apparent bytes on it
#     (scripts/bench/gendata.py: eight large files, ~2000 small files of 1-20 KB, a sparse
#     pages image of size/4 that is half holes, a few hundred small *.img files, symlinks,
#     hardlinks; contents ~50% incompressible, the rest low-entropy or mostly-zero pages);
#     an image kept by --keep is reused by the next run when its tree is the same;
#   * times, --runs times each, interleaved (run 1 of every tool, then run 2, ...):
#       export: ckpt export | GNU tar -cf | bsdtar -cf | cp -a --reflink=always (ext4: cp -a)
#       import: ckpt import | GNU tar -xf (of GNU tar's archive) | cp (the export's cp runs)
#       pipe:   ckpt export DIR - | wc -c  vs  tar -cf - DIR | wc -c  (the bytes each stream
#               carries are reported, with those of an untimed tar --sparse -cf - DIR)
#       zstd:   ckpt export --compress zstd  vs  tar -I 'zstd -T0' -cf; then, of ckpt's
#               (seekable) zstd archive, ckpt import  vs  zstd -dc ARCH | tar -x, and
#               ckpt list  vs  tar -tf
#     and on a separate Btrfs image 100,000 files of 0-8 KB (--files): ckpt export/import vs
#     GNU tar -cf/-xf; with --rss-scale also ckpt on a 4x larger tree (4x size, 4x file
#     counts) for its peak RSS;
#   * end to end with a real podman (--e2e alone, or part of the default run; needs podman,
#     runc, CRIU and busybox-static), on Btrfs and XFS, for each --e2e-sizes size of rootfs
#     changes (the checkpoint-shaped tree, written into a running container's layer):
#       checkpoint: podman container checkpoint --export (--compress none, and zstd) vs
#                   ckpt podman checkpoint (uncompressed, and --compress zstd): each stops
#                   the container, which is rolled back (ckpt podman restore --into, untimed)
#                   for the next run; and, without a target, both uncompressed with
#                   --leave-running
#       restore:    podman container restore --import of podman's archive vs ckpt podman
#                   restore of ckpt's archive, each into a new container (removed, untimed,
#                   after the run)
#     with its own table (targets: ckpt >= 10x faster than podman, uncompressed);
#   * registries (--registry alone, or part of the default run; --no-registry skips it; needs
#     docker-registry and skopeo): on a Btrfs image, a docker-registry on 127.0.0.1 whose
#     storage is on the image, the --size tree exported by ckpt, and a second checkpoint of it
#     (2% of the files rewritten, the largest file among them):
#       push:   ckpt push of each vs skopeo copy --preserve-digests of an OCI layout whose one
#               uncompressed layer is a tar of the same tree (what buildah makes of it), the
#               second push into a registry that has the first; bytes uploaded = growth of
#               the registry's storage
#       pull:   ckpt pull and ckpt pull --import (fresh store each run), then ckpt pull of the
#               second checkpoint into a store that has the first; bytes = what the registry's
#               access log says it sent
#     with its own table (targets: the second push and pull move <= 5% of the first's bytes;
#     pull --import <= 1.2x pull);
#   * prints one markdown table (medians, min-max, peak RSS, extra disk, ratio ckpt/peer, a
#     PASS/FAIL column per target) and saves it with the raw runs under --work/results/.
#
# Method:
#   * Caches: before every timed run the filesystem is synced and the page, dentry and inode
#     caches are dropped (sync; echo 3 > /proc/sys/vm/drop_caches), so every run starts cold
#     and runs are comparable. --warm skips the drop (the checkpoint was just written, so a
#     warm cache is the other realistic case). A listing's run (ckpt list, tar -tf) is preceded,
#     after the drop and off the clock, by the tool's --version, so that loading the program
#     from disk is not counted as reading the archive: the archive and its filesystem are
#     still cold.
#   * A run's time is wall clock from just before the command to just after `sync -f MNT`
#     (syncfs of the benchmark filesystem; on a loop device that flush reaches the backing
#     disk) returns: the time includes writing the data back.
#   * Peak RSS is /usr/bin/time's maximum resident set size of the command (for a pipeline,
#     the largest process in it); the table shows the maximum over runs.
#   * Extra disk is the filesystem's used space after the run minus before it, both measured
#     after a sync (Btrfs: `btrfs filesystem sync` + "Used:" of `btrfs filesystem usage -b`,
#     which counts metadata's DUP copies; XFS/ext4: statfs blocks - free blocks; on XFS after
#     `xfs_spaceman -c 'prealloc -s'`, which frees the speculative preallocations XFS would
#     otherwise keep until the inode is evicted: without it a fresh archive looks ~20 MB larger).
#     The disk target compares ckpt export's median with the tree's physical size (du).
#   * Every output is deleted (outside the timed section) before the next run.
#   * Targets: end to end, ckpt podman checkpoint and restore >= 10x faster than podman's own
#     (uncompressed) on Btrfs and XFS; Btrfs/XFS export and import <= 1.5x cp -a --reflink=always; archive's extra disk
#     on Btrfs/XFS <= 1% of the data; ext4 export/import <= GNU tar; ckpt peak RSS <= 32 MiB
#     on every row (and on the 4x tree with --rss-scale); 100,000 small files export/import
#     <= GNU tar; pipe and zstd <= the GNU tar pipelines; ckpt import of its zstd archive
#     >= 1.7x faster than zstd -dc | tar -x, ckpt list of it <= 50 ms. A missed target is reported in the
#     table, it does not make the script fail; a failing command does (exit 1).
#   * Run 1 of ckpt import (or an untimed import) is compared with the source tree (types,
#     modes, sizes, mtimes, link targets and counts; contents of files <= 1 MiB and of the two
#     largest): the verdict is printed under the table.
#   * Mounts, loop devices and (unless --keep) images are removed on exit, Ctrl-C or failure.
#
# Duration: see --help. Disk: images are sparse; the largest is ~5x --size (ext4), the
# --rss-scale one ~6x --size + 2 GiB; without --keep only one image exists at a time.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
GEN=$SCRIPT_DIR/bench/gendata.py
REPORT=$SCRIPT_DIR/bench/report.py

SIZE=4G
RUNS=3
WORK=/var/tmp/ckpt-bench
FSES="btrfs xfs ext4"
FILES=100000
RSS_SCALE=0
KEEP=0
CKPT=
WARM=0
# A command run after the cache drop and before the clock starts (see measure).
PREP=
SEED=1
DIO=on
CASES="export,import,pipe,zstd"
E2E=1        # 0: skip the end-to-end section; 2: run only it (--e2e)
E2E_SIZES="1G 4G"
REGISTRY=1   # 0: skip the registry section; 2: run only it (--registry)

usage() {
  cat <<EOF
Usage: scripts/bench.sh [OPTIONS]

Benchmarks ckpt export/import against GNU tar, bsdtar and cp on loop-mounted Btrfs, XFS
and ext4 images and prints one markdown table (medians of --runs, ratios ckpt/peer, a
PASS/FAIL column per target). Needs root (loop devices, mkfs, drop_caches).

Options:
  --size SIZE      apparent size of the checkpoint-shaped tree (K/M/G suffix) [$SIZE]
  --runs N         timed runs per tool and case; medians are reported [$RUNS]
  --fs LIST        filesystems, comma or space separated, of btrfs,xfs,ext4 [btrfs,xfs,ext4]
  --cases LIST     cases on each filesystem, of export,import,pipe,zstd [$CASES]
  --files N        files in the small-files case on Btrfs (0 skips it) [$FILES]
  --rss-scale      also run ckpt export/import once on a 4x larger tree (4x size and file
                   counts) on Btrfs, for its peak RSS
  --e2e            run only the end-to-end section (real podman containers, on the
                   filesystems of --fs that are btrfs or xfs); the default run includes it
  --no-e2e         skip the end-to-end section
  --registry       run only the registry section (ckpt push/pull vs skopeo copy through a
                   local docker-registry, on Btrfs); the default run includes it
  --no-registry    skip the registry section
  --e2e-sizes LIST rootfs changes per end-to-end case, comma or space separated [1G,4G]
  --work DIR       where images, mount points and results go [$WORK]
  --keep           keep the images (and the generated trees) for the next run, which reuses
                   them when size and generator match; default: delete them at exit
  --ckpt BIN       use this ckpt binary instead of building target/release/ckpt
  --warm           do not drop caches before each timed run (default: drop them)
  --no-dio         loop devices without direct I/O (the host page cache caches the images)
  --seed N         seed of the generated trees [$SEED]
  -h, --help       this help

Time (2 cores, virtio disk): the defaults with --rss-scale take ~17 min (3 runs; mostly
tar, bsdtar and zstd writing full copies); --size 512M about a third of that. The
100,000-file case takes ~3 min (--files 0 skips it, --files 20000 shrinks it);
--rss-scale adds ~2 min. The end-to-end section (--e2e) writes each size's tree, then
per run three podman exports and one podman import: roughly 3 min per GiB and filesystem
(~30 min for the default sizes).
Output: the tables on stdout; progress on stderr; the tables and raw runs (runs.tsv,
e2e.tsv) in
WORK/results/DATE/.
EOF
}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

while (($#)); do
  case $1 in
    --size) SIZE=${2:?--size needs a value}; shift 2 ;;
    --size=*) SIZE=${1#*=}; shift ;;
    --runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
    --runs=*) RUNS=${1#*=}; shift ;;
    --fs) FSES=${2:?--fs needs a value}; shift 2 ;;
    --fs=*) FSES=${1#*=}; shift ;;
    --cases) CASES=${2:?--cases needs a value}; shift 2 ;;
    --cases=*) CASES=${1#*=}; shift ;;
    --files) FILES=${2:?--files needs a value}; shift 2 ;;
    --files=*) FILES=${1#*=}; shift ;;
    --rss-scale) RSS_SCALE=1; shift ;;
    --e2e) E2E=2; shift ;;
    --no-e2e) E2E=0; shift ;;
    --registry) REGISTRY=2; shift ;;
    --no-registry) REGISTRY=0; shift ;;
    --e2e-sizes) E2E_SIZES=${2:?--e2e-sizes needs a value}; shift 2 ;;
    --e2e-sizes=*) E2E_SIZES=${1#*=}; shift ;;
    --work) WORK=${2:?--work needs a value}; shift 2 ;;
    --work=*) WORK=${1#*=}; shift ;;
    --keep) KEEP=1; shift ;;
    --ckpt) CKPT=${2:?--ckpt needs a value}; shift 2 ;;
    --ckpt=*) CKPT=${1#*=}; shift ;;
    --warm) WARM=1; shift ;;
    --no-dio) DIO=off; shift ;;
    --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
    --seed=*) SEED=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

to_bytes() {
  local s=$1 n u
  [[ $s =~ ^([0-9]+)([KkMmGgTt]?)(i?[Bb])?$ ]] || die "bad size: $s"
  n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]^^}
  case $u in
    K) echo $((n << 10)) ;; M) echo $((n << 20)) ;; G) echo $((n << 30)) ;; T) echo $((n << 40)) ;;
    *) echo "$n" ;;
  esac
}
SIZE_BYTES=$(to_bytes "$SIZE")
((SIZE_BYTES >= 64 << 20)) || die "--size must be at least 64M"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $FILES =~ ^[0-9]+$ ]] || die "--files must be a number"
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a number"
if ((REGISTRY == 2)); then
  ((E2E != 2)) || die "--registry and --e2e each run only their own section: give one"
  # Only the registry section: the others are skipped through their own switches.
  FSES="" FILES=0 RSS_SCALE=0 E2E=0
elif ((E2E == 2)); then
  REGISTRY=0
fi
E2E_SIZES=${E2E_SIZES//,/ }
for s in $E2E_SIZES; do
  (($(to_bytes "$s") >= 16 << 20)) || die "--e2e-sizes: each size must be at least 16M"
done
FSES=${FSES//,/ }
CASES=" ${CASES//,/ } "
for c in $CASES; do
  case $c in export | import | pipe | zstd) ;; *) die "unknown case in --cases: $c" ;; esac
done
has_case() { [[ $CASES == *" $1 "* ]]; }
for fs in $FSES; do
  case $fs in btrfs | xfs | ext4) ;; *) die "unknown filesystem in --fs: $fs" ;; esac
done
[[ $WORK != *[[:space:]]* ]] || die "--work must not contain whitespace"
((EUID == 0)) || die "must run as root (loop devices, mkfs, mount, drop_caches)"

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
declare -A pkg_of=(
  [/usr/bin/time]=time [mkfs.btrfs]=btrfs-progs [btrfs]=btrfs-progs [mkfs.xfs]=xfsprogs
  [mkfs.ext4]=e2fsprogs [bsdtar]=libarchive-tools [zstd]=zstd [tar]=tar [openssl]=openssl
  [python3]=python3 [losetup]=mount [fstrim]=util-linux [flock]=util-linux [cmp]=diffutils
)
if ((E2E)); then
  # CRIU 4.2 is not a Debian package: scripts/test.sh builds and installs it.
  pkg_of+=([podman]=podman [runc]=runc [conmon]=conmon [/bin/busybox]=busybox-static)
fi
if ((REGISTRY)); then
  pkg_of+=([docker-registry]=docker-registry [skopeo]=skopeo [btrfs]=btrfs-progs)
fi
missing=()
for cmd in "${!pkg_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_of[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >&2
fi
# runc runs `criu` from PATH: the CRIU 4.2 that scripts/test.sh installs in /usr/local/sbin
# must come before an older one in /usr/sbin.
export PATH="/usr/local/sbin:$PATH"
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3

CKPT_FROM="built from $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?')"
if [[ -n $CKPT ]]; then
  CKPT_FROM="given with --ckpt"
else
  if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
    PATH=$HOME/.cargo/bin:$PATH
  fi
  log "building ckpt (cargo build --release)"
  (cd "$REPO" && cargo build --release --quiet) >&2
  CKPT=$REPO/target/release/ckpt
fi
[[ -x $CKPT ]] || die "no ckpt binary at $CKPT"
CKPT=$(realpath "$CKPT")

# ---------------------------------------------------------------------------
# State, cleanup
# ---------------------------------------------------------------------------
mkdir -p "$WORK" "$WORK/mnt"
exec 9>"$WORK/.lock"
flock -n 9 || die "another bench.sh holds $WORK/.lock"
STAMP=$(date +%Y%m%d-%H%M%S)
RES=$WORK/results/$STAMP
mkdir -p "$RES"
TMPD=$(mktemp -d "$WORK/tmp.XXXXXX")
: >"$RES/runs.tsv"
RUNS_TSV=$RES/runs.tsv # where measure records; the end-to-end section has its own file
: >"$RES/meta.tsv"
: >"$RES/ckpt.tsv"
declare -A LOOP_OF=() # mount point -> loop device
declare -A IMG_OF=()  # mount point -> image
CLEANING=0
E2E_PODMAN= # the end-to-end section's podman dir while it has containers
REG_PID=    # the registry section's docker-registry while it runs

teardown() { # mount point
  local mnt=$1 dev=${LOOP_OF[$1]:-} img=${IMG_OF[$1]:-}
  if mountpoint -q "$mnt"; then
    if ((KEEP)); then fstrim "$mnt" >/dev/null 2>&1 || true; fi
    umount "$mnt" 2>/dev/null || { sleep 1; umount "$mnt" 2>/dev/null; } || umount -l "$mnt" || true
  fi
  if [[ -n $dev ]]; then
    losetup -d "$dev" 2>/dev/null || true
  fi
  if [[ -n $img && $KEEP == 0 ]]; then rm -f "$img"; fi
  unset "LOOP_OF[$mnt]" "IMG_OF[$mnt]"
}

cleanup() {
  local rc=$?
  ((CLEANING)) && return
  CLEANING=1
  set +e
  cd /
  if [[ -n $E2E_PODMAN ]]; then e2e_podman_down; fi
  if [[ -n $REG_PID ]]; then reg_stop; fi
  for mnt in "${!LOOP_OF[@]}"; do
    log "cleanup: unmounting $mnt"
    teardown "$mnt"
  done
  rm -rf "$TMPD"
  if ((rc)); then log "exit status $rc; partial results in $RES"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
cd "$WORK"

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
meta() { printf '%s\t%s\n' "$1" "$2" >>"$RES/meta.tsv"; }

used_bytes() { # mount point, fstype -> used bytes after a sync
  if [[ $2 == btrfs ]]; then
    btrfs filesystem sync "$1" >/dev/null
    btrfs filesystem usage -b "$1" 2>/dev/null | awk '$1 == "Used:" { print $2; exit }'
  else
    # XFS keeps speculative post-EOF (and CoW) preallocations until the inode is evicted:
    # free them first so that the figure is the steady state, not a transient.
    if [[ $2 == xfs ]]; then xfs_spaceman -c 'prealloc -s' "$1" >/dev/null; fi
    sync -f "$1"
    local bsize blocks free
    read -r bsize blocks free < <(stat -f -c '%S %b %f' "$1")
    echo $((bsize * (blocks - free))) # not awk: mawk's %d stops at 2^31 - 1
  fi
}

drop_caches() {
  sync
  ((WARM)) || echo 3 >/proc/sys/vm/drop_caches
}

attach() { # image -> loop device (retries: losetup -f races with other users of loop devices)
  local img=$1 dev try
  for try in 1 2 3 4 5; do
    if dev=$(losetup -f --show --direct-io="$DIO" "$img" 2>"$TMPD/losetup.err"); then
      echo "$dev"
      return 0
    fi
    # A failed setup can leave the image attached: detach before trying again.
    losetup -j "$img" -n -O NAME 2>/dev/null | while read -r d; do losetup -d "$d" 2>/dev/null || true; done
    sleep "$try"
  done
  cat "$TMPD/losetup.err" >&2
  die "could not attach $img to a loop device"
}

mkfs_img() { # fstype image
  case $1 in
    btrfs) mkfs.btrfs -q -f "$2" >/dev/null 2>&1 || mkfs.btrfs -f "$2" >&2 ;;
    xfs) mkfs.xfs -q -f "$2" >&2 ;;
    ext4) mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$2" >&2 ;;
  esac
}

mount_img() { # fstype image mount point -> 0 if mounted
  local dev
  dev=$(attach "$2")
  if mount -t "$1" "$dev" "$3"; then
    LOOP_OF[$3]=$dev
    IMG_OF[$3]=$2
    return 0
  fi
  losetup -d "$dev" || true
  return 1
}

# setup_fs NAME FSTYPE IMAGE_BYTES STAMP GEN_ARGS... : a mounted fs at WORK/mnt/NAME whose
# data/ holds the tree made by gendata.py GEN_ARGS; reused from a kept image when STAMP matches.
setup_fs() {
  local name=$1 fstype=$2 bytes=$3 stamp=$4
  shift 4
  local img=$WORK/$name.img mnt=$WORK/mnt/$name t0
  mkdir -p "$mnt"
  ! mountpoint -q "$mnt" || die "$mnt is already mounted"
  if [[ -f $img ]] && (($(stat -c %s "$img") >= bytes)) && mount_img "$fstype" "$img" "$mnt" 2>/dev/null; then
    if [[ -d $mnt/data && -f $mnt/.bench-stamp && $(<"$mnt/.bench-stamp") == "$stamp" ]]; then
      log "$name: reusing the tree in $img"
    else
      teardown "$mnt"
      rm -f "$img"
    fi
  fi
  if ! mountpoint -q "$mnt"; then
    rm -f "$img"
    truncate -s "$bytes" "$img"
    log "$name: mkfs.$fstype on $img ($((bytes >> 20)) MiB, sparse)"
    mkfs_img "$fstype" "$img"
    mount_img "$fstype" "$img" "$mnt" || die "cannot mount $img"
    log "$name: generating the tree ($*)"
    t0=$SECONDS
    "$PY" "$GEN" "$mnt/data" --seed "$SEED" "$@"
    echo "$stamp" >"$mnt/.bench-stamp"
    sync -f "$mnt"
    log "$name: generated in $((SECONDS - t0)) s"
  fi
  rm -rf "$mnt/out" "$mnt/arch"
  mkdir -p "$mnt/out" "$mnt/arch"
  meta "data_bytes.$name" "$(du -sB1 "$mnt/data" | cut -f1)"
  meta "apparent_bytes.$name" "$(du -sb "$mnt/data" | cut -f1)"
  MNT=$mnt
}

# resident_bytes DIR: bytes of page cache the files below DIR hold (fincore).
resident_bytes() {
  find "$1" -xdev -type f -print0 | xargs -0 -r fincore --bytes --noheadings --output RES 2>/dev/null |
    awk '{ s += $1 } END { printf "%.0f", s }'
}

# measure FS OP TOOL RUN MNT FSTYPE OUTPUTS CMD: one timed run of CMD (bash -c), recorded in
# $RUNS_TSV; OUTPUTS (space-separated paths, may be empty) are deleted afterwards.
measure() {
  local fs=$1 op=$2 tool=$3 run=$4 mnt=$5 fstype=$6 outs=$7 cmd=$8
  local before after t0 t1 rc=0 rss secs
  before=$(used_bytes "$mnt" "$fstype")
  drop_caches
  if [[ -n $PREP ]]; then
    bash -c "$PREP" >/dev/null 2>&1
  fi
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$TMPD/rss" bash -c "$cmd" >"$TMPD/stdout" 2>"$TMPD/stderr" || rc=$?
  sync -f "$mnt"
  t1=$(date +%s.%N)
  # What the run left in the page cache: the resident pages of the filesystem's files (the
  # caches were dropped before it; other processes' pages do not count).
  if [[ $fs != many && $fs != rss4 && $RUNS_TSV == "$RES/runs.tsv" ]]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$fs" "$op" "$tool" "$run" "$(resident_bytes "$mnt")" >>"$RES/cache.tsv"
  fi
  if ((rc)); then
    log "$fs $op $tool run $run FAILED (exit $rc): $cmd"
    cat "$TMPD/stderr" >&2
    exit 1
  fi
  after=$(used_bytes "$mnt" "$fstype")
  rss=$(tail -n 1 "$TMPD/rss")
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fs" "$op" "$tool" "$run" "$secs" "$rss" "$((after - before))" \
    >>"$RUNS_TSV"
  log "$fs $op $tool run $run: ${secs}s, RSS $((rss / 1024)) MiB, extra disk $(((after - before) >> 20)) MiB"
  if [[ $tool == ckpt && -s $TMPD/stdout ]] && head -c 1 "$TMPD/stdout" | grep -q '{'; then
    printf '%s\t%s\t%s\t%s\n' "$fs" "$op" "$run" "$(head -n 1 "$TMPD/stdout")" >>"$RES/ckpt.tsv"
  fi
  if [[ $op == zstd && $run == 1 ]]; then
    meta "zsize.$fs.$tool" "$(stat -c %s "$outs")"
  fi
  if [[ $op == pipe && $run == 1 ]]; then
    meta "psize.$fs.$tool" "$(tr -d ' \n' <"$TMPD/stdout")"
  fi
  if [[ -s $TMPD/stderr ]]; then
    log "  stderr: $(head -c 300 "$TMPD/stderr" | tr '\n' ' ')"
  fi
  if [[ -n $outs ]]; then
    # shellcheck disable=SC2086
    rm -rf $outs
  fi
}

# verify NAME SRC DST: compare two trees (types, modes, sizes, mtimes, link targets, link
# counts; contents of every file up to 1 MiB and of the two largest); records the verdict.
verify() {
  local name=$1 src=$2 dst=$3 bad=0
  listing() { (cd "$1" && find . -printf '%y %m %s %T@ %n %p -> %l\n' | LC_ALL=C sort); }
  sums() {
    (cd "$1" && { find . -type f -size -1025k -print0
      find . -type f -size +1M -printf '%s %p\0' | sort -z -n -r | head -z -n 2 | sed -z 's/^[0-9]* //'
    } | LC_ALL=C sort -z | xargs -0 -r md5sum) || true
  }
  if ! diff <(listing "$src") <(listing "$dst") >"$TMPD/verify.diff"; then
    bad=1
    log "$name: tree listings differ (first lines):"
    head -n 20 "$TMPD/verify.diff" >&2
  fi
  if ! diff <(sums "$src") <(sums "$dst") >"$TMPD/verify.diff"; then
    bad=1
    log "$name: contents differ (first lines):"
    head -n 20 "$TMPD/verify.diff" >&2
  fi
  if ((bad)); then meta "verify.$name" "MISMATCH (see the log)"; else meta "verify.$name" "identical"; fi
}

ckpt_json() { # op: the --json flag if this ckpt has it
  if "$CKPT" "$1" --help 2>/dev/null | grep -q -- '--json'; then echo --json; fi
}

# ---------------------------------------------------------------------------
# Feature detection (streaming and compression are recent)
# ---------------------------------------------------------------------------
HAVE_ZSTD=0
if "$CKPT" export --help 2>/dev/null | grep -q -- --compress; then HAVE_ZSTD=1; fi
HAVE_PIPE=0
mkdir -p "$TMPD/probe/src"
echo probe >"$TMPD/probe/src/file"
if (cd "$TMPD/probe" && "$CKPT" export src - 2>/dev/null | cat >out.tar) &&
  [[ ! -e $TMPD/probe/- ]] && tar -tf "$TMPD/probe/out.tar" 2>/dev/null | grep -q 'file$'; then
  HAVE_PIPE=1
fi
((HAVE_PIPE)) || meta na.pipe "this ckpt cannot export to standard output"
((HAVE_ZSTD)) || meta na.zstd "this ckpt has no --compress"
EJSON=$(ckpt_json export)
IJSON=$(ckpt_json import)

# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------
{
  echo "# ckpt benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
  echo "- ckpt: $("$CKPT" --version 2>/dev/null) ($CKPT_FROM), $CKPT"
  echo "- peers: $(tar --version | head -n 1), $(bsdtar --version), $(cp --version | head -n 1), $(zstd --version | sed 's/^\*\*\* //; s/, by.*//')"
  echo "- tree: --size $SIZE ($SIZE_BYTES bytes apparent), seed $SEED; small-files case: $( ((FILES)) && echo "$FILES files of 0-8 KB on Btrfs" || echo skipped)$( ((RSS_SCALE)) && echo "; --rss-scale: 4x tree")"
  if ((E2E)); then
    echo "- end to end: sizes $E2E_SIZES; $(podman --version 2>/dev/null || echo 'no podman'), $(runc --version 2>/dev/null | head -n 1 || echo 'no runc'), CRIU $(criu --version 2>/dev/null | awk '/^Version/ { print $2 }')"
  fi
  echo "- method: runs per tool: $RUNS, medians; loop images (direct I/O $DIO); $( ((WARM)) && echo "warm caches" || echo "caches dropped before each run"); times include sync -f of the filesystem; peak RSS = max over runs (/usr/bin/time)"
  echo
} >"$RES/report.md"
cat "$RES/report.md" >&2

# ---------------------------------------------------------------------------
# Checkpoint-shaped tree on each filesystem
# ---------------------------------------------------------------------------
GEN_SUM=$(md5sum "$GEN" | cut -c1-12)
T_START=$SECONDS

bench_fs() {
  local fs=$1 bytes cpcmd r M
  case $fs in
    ext4) bytes=$((SIZE_BYTES * 5 + (2 << 30))); cpcmd="cp -a" ;;
    *) bytes=$((SIZE_BYTES * 4 + (2 << 30))); cpcmd="cp -a --reflink=always" ;;
  esac
  local avail
  avail=$(df -B1 --output=avail "$WORK" | tail -n 1)
  ((avail > bytes)) || log "warning: $WORK has $((avail >> 30)) GiB free, the $fs image may need $((bytes >> 30)) GiB"
  setup_fs "$fs" "$fs" "$bytes" "gen=$GEN_SUM shape=checkpoint size=$SIZE_BYTES seed=$SEED" --size "$SIZE_BYTES"
  M=$MNT
  cd "$M"

  if has_case export || has_case import; then
    log "$fs: export (cp runs serve the import comparison too)"
    for ((r = 1; r <= RUNS; r++)); do
      if has_case export; then
        measure "$fs" export ckpt "$r" "$M" "$fs" "$M/out/a.ckpt.tar" "$CKPT export $EJSON $M/data $M/out/a.ckpt.tar"
        measure "$fs" export gnutar "$r" "$M" "$fs" "$M/out/a.tar" "tar -C $M -cf $M/out/a.tar data"
        measure "$fs" export bsdtar "$r" "$M" "$fs" "$M/out/a.bsd.tar" "bsdtar -C $M -cf $M/out/a.bsd.tar data"
      fi
      measure "$fs" export cp "$r" "$M" "$fs" "$M/out/cp" "$cpcmd $M/data $M/out/cp"
    done
  fi

  if has_case pipe; then
    log "$fs: export to a pipe"
    for ((r = 1; r <= RUNS; r++)); do
      if ((HAVE_PIPE)); then
        measure "$fs" pipe ckpt "$r" "$M" "$fs" "" "set -o pipefail; $CKPT export $M/data - | wc -c"
      fi
      measure "$fs" pipe gnutar "$r" "$M" "$fs" "" "set -o pipefail; tar -C $M -cf - data | wc -c"
    done
    meta "psize.$fs.gnutar-sparse" "$(tar -C "$M" --sparse -cf - data | wc -c)"
  fi

  if has_case zstd; then
    log "$fs: export with zstd"
    for ((r = 1; r <= RUNS; r++)); do
      if ((HAVE_ZSTD)); then
        measure "$fs" zstd ckpt "$r" "$M" "$fs" "$M/out/a.tar.zst" \
          "$CKPT export --compress zstd $M/data $M/out/a.tar.zst"
      fi
      measure "$fs" zstd gnutar "$r" "$M" "$fs" "$M/out/a.tar.zst" \
        "tar -C $M -I 'zstd -T0' -cf $M/out/a.tar.zst data"
    done
    ((HAVE_ZSTD)) && zstd_read_case "$fs" "$fs" "$M"
  fi

  if has_case import; then
    import_case "$fs" "$fs" "$M"
  else
    log "$fs: checking ckpt's round trip (untimed)"
    "$CKPT" export "$M/data" "$M/arch/a.ckpt.tar" >/dev/null
    "$CKPT" import "$M/arch/a.ckpt.tar" "$M/out/verify" >/dev/null
    verify_any "$fs" "$M/data" "$M/out/verify"
  fi
  rm -rf "$M/out" "$M/arch"
  cd "$WORK"
  teardown "$M"
}

# import_case NAME FSTYPE MNT: ckpt import of ckpt's archive vs GNU tar -xf of GNU tar's archive
# (both archives made once, untimed); run 1's ckpt import is checked against the source.
import_case() {
  local name=$1 fstype=$2 M=$3 r
  log "$name: making the archives to import (untimed)"
  "$CKPT" export "$M/data" "$M/arch/a.ckpt.tar" >/dev/null
  tar -C "$M" -cf "$M/arch/a.tar" data
  sync -f "$M"
  log "$name: import"
  for ((r = 1; r <= RUNS; r++)); do
    if ((r == 1)); then
      measure "$name" import ckpt "$r" "$M" "$fstype" "" "$CKPT import $IJSON $M/arch/a.ckpt.tar $M/out/ck"
      log "$name: checking ckpt's round trip (untimed)"
      verify_any "$name" "$M/data" "$M/out/ck"
      rm -rf "$M/out/ck"
    else
      measure "$name" import ckpt "$r" "$M" "$fstype" "$M/out/ck" "$CKPT import $IJSON $M/arch/a.ckpt.tar $M/out/ck"
    fi
    measure "$name" import gnutar "$r" "$M" "$fstype" "$M/out/gt" \
      "mkdir $M/out/gt && tar -C $M/out/gt -xf $M/arch/a.tar"
  done
}

# zstd_read_case NAME FSTYPE MNT: of ckpt's zstd archive (made once, untimed), ckpt import vs
# zstd -dc | tar -x, and ckpt list vs tar -tf; run 1's import is checked against the source.
zstd_read_case() {
  local name=$1 fstype=$2 M=$3 r A=$3/arch/a.tar.zst
  log "$name: making ckpt's zstd archive to read (untimed)"
  "$CKPT" export --compress zstd "$M/data" "$A" >/dev/null
  sync -f "$M"
  log "$name: import and list of the zstd archive"
  for ((r = 1; r <= RUNS; r++)); do
    if ((r == 1)); then
      measure "$name" zstd-import ckpt "$r" "$M" "$fstype" "" "$CKPT import $IJSON $A $M/out/ck"
      log "$name: checking ckpt's zstd round trip (untimed)"
      verify_any "$name-zstd" "$M/data" "$M/out/ck"
      rm -rf "$M/out/ck"
    else
      measure "$name" zstd-import ckpt "$r" "$M" "$fstype" "$M/out/ck" "$CKPT import $IJSON $A $M/out/ck"
    fi
    measure "$name" zstd-import zstdtar "$r" "$M" "$fstype" "$M/out/zt" \
      "set -o pipefail; mkdir $M/out/zt && zstd -dc $A | tar -C $M/out/zt -x"
    # A listing reads so little that loading the tool would be most of it: each tool runs
    # once first, so the archive and its filesystem are cold but the program is not.
    PREP="$CKPT --version" measure "$name" zstd-list ckpt "$r" "$M" "$fstype" "" "$CKPT list $A >/dev/null"
    PREP="tar --version" measure "$name" zstd-list gnutar "$r" "$M" "$fstype" "" "tar -tf $A >/dev/null"
  done
  rm -f "$A"
}

# The archive may hold "data/..." (directory name kept) or the directory's contents: verify
# picks whichever exists.
verify_any() { # name src importdir
  if [[ -d $3/data && ! -e $2/data ]]; then verify "$1" "$2" "$3/data"; else verify "$1" "$2" "$3"; fi
}

if ((E2E != 2)); then
  for fs in $FSES; do
    bench_fs "$fs"
  done
fi

# ---------------------------------------------------------------------------
# 100,000 small files on Btrfs
# ---------------------------------------------------------------------------
if ((FILES > 0 && E2E != 2)); then
  bytes=$((FILES * 8192 * 4 + (2 << 30)))
  setup_fs many btrfs "$bytes" "gen=$GEN_SUM shape=many count=$FILES seed=$SEED" --shape many --count "$FILES"
  M=$MNT
  cd "$M"
  log "many: export"
  for ((r = 1; r <= RUNS; r++)); do
    measure many export ckpt "$r" "$M" btrfs "$M/out/a.ckpt.tar" "$CKPT export $EJSON $M/data $M/out/a.ckpt.tar"
    measure many export gnutar "$r" "$M" btrfs "$M/out/a.tar" "tar -C $M -cf $M/out/a.tar data"
  done
  import_case many btrfs "$M"
  rm -rf "$M/out" "$M/arch"
  cd "$WORK"
  teardown "$M"
fi

# ---------------------------------------------------------------------------
# Peak RSS on a 4x larger tree
# ---------------------------------------------------------------------------
if ((RSS_SCALE && E2E != 2)); then
  big=$((SIZE_BYTES * 4))
  bytes=$((big * 3 / 2 + (2 << 30)))
  setup_fs rss4 btrfs "$bytes" "gen=$GEN_SUM shape=checkpoint size=$big scale=4 seed=$SEED" --size "$big" --scale 4
  M=$MNT
  cd "$M"
  measure rss4 export ckpt 1 "$M" btrfs "" "$CKPT export $EJSON $M/data $M/arch/a.ckpt.tar"
  measure rss4 import ckpt 1 "$M" btrfs "$M/out/ck $M/arch/a.ckpt.tar" "$CKPT import $IJSON $M/arch/a.ckpt.tar $M/out/ck"
  rm -rf "$M/out" "$M/arch"
  cd "$WORK"
  teardown "$M"
fi

# ---------------------------------------------------------------------------
# End to end: a real podman
# ---------------------------------------------------------------------------
E2E_LOOP='i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done'

# Why podman cannot checkpoint here (empty when it can).
e2e_unusable() {
  local c
  for c in podman runc conmon; do
    command -v "$c" >/dev/null 2>&1 || { echo "no $c"; return; }
  done
  criu check >/dev/null 2>&1 || { echo "criu check fails (scripts/test.sh builds CRIU 4.2)"; return; }
  [[ -x /bin/busybox ]] || { echo "no /bin/busybox (busybox-static)"; return; }
  "$CKPT" podman --help >/dev/null 2>&1 || echo "this ckpt has no podman command"
}

# e2e_podman_up DIR: podman configured for this kind of VM (runc, cgroupfs, file events and
# locks, no network, ulimits it may set) with its storage in DIR, and a busybox image
# (static busybox, a relative symlink per applet).
e2e_podman_up() {
  local d=$1 a
  mkdir -p "$d/rootfs/bin" "$d/rootfs/tmp"
  cat >"$d/containers.conf" <<EOF
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
lock_type = "file"
tmp_dir = "$d/run/libpod"

[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
netns = "none"
log_driver = "k8s-file"
EOF
  cat >"$d/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$d/storage"
runroot = "$d/run"
EOF
  export CONTAINERS_CONF=$d/containers.conf CONTAINERS_STORAGE_CONF=$d/storage.conf
  E2E_PODMAN=$d
  cp /bin/busybox "$d/rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [[ $a == busybox ]] || ln -s busybox "$d/rootfs/bin/$a"
  done
  tar -C "$d/rootfs" -c . | podman import -q - localhost/bb >/dev/null
  rm -rf "$d/rootfs"
}

# Removes the containers and images and unmounts what podman left mounted, so that the
# benchmark filesystem can be unmounted.
e2e_podman_down() {
  local m
  podman rm -f -a -t 0 >/dev/null 2>&1 || true
  podman rmi -a -f >/dev/null 2>&1 || true
  { findmnt -rn -o TARGET | grep -F "$E2E_PODMAN/" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  E2E_PODMAN=
  unset CONTAINERS_CONF CONTAINERS_STORAGE_CONF
}

# e2e_count NAME: container NAME's counter. The loop's > empties the file before it writes
# the next value, so an empty read is read again.
e2e_count() {
  local v
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    v=$(podman exec "$1" cat /tmp/count 2>&1) || true
    [[ -z $v ]] || break
    sleep 0.02
  done
  echo "$v"
}

# e2e_check NAME KEY: the restored container's counter grows and it sees as many /data
# entries as the source container; records the verdict.
e2e_check() {
  local a b want got
  a=$(e2e_count "$1")
  sleep 0.5
  b=$(e2e_count "$1")
  want=$(podman exec src find /data | wc -l) || true
  got=$(podman exec "$1" find /data | wc -l) || true
  if [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] && ((b > a && got == want)); then
    meta "e2e_verify.$2" "process continued, $got rootfs entries"
  else
    meta "e2e_verify.$2" "MISMATCH: counter $a then $b, $got of $want rootfs entries"
    log "$2: restored container $1: counter $a then $b, $got of $want /data entries"
  fi
}

# e2e_rollback ARCHIVE: container src running again as ARCHIVE (its own checkpoint) has it,
# after a checkpoint that stopped it.
e2e_rollback() {
  "$CKPT" podman restore -q --into src "$1" >/dev/null || die "cannot roll src back to $1"
}

# bench_e2e FSTYPE SIZE: a running container with SIZE of rootfs changes on a fresh FSTYPE
# image; checkpoint and restore timed for podman and for ckpt. podman's export leaves its
# rootfs-diff.tar and deleted.files in the userdata dir, where ckpt podman checkpoint refuses
# to find them: they are removed (untimed) with podman's archive after each podman run.
# A checkpoint without --leave-running stops the container, as a migration does; each such
# run is followed by a rollback (untimed) to a checkpoint made first, so that every run
# checkpoints the same running container.
bench_e2e() {
  local fs=$1 size=$2 bytes name img M upper userdata r op
  # As for a listing: every run, podman's and ckpt's alike, starts with the programs the
  # checkpoint or restore executes run once (off the clock), so that the archive, the
  # layer and the store are read cold but the programs are not, as on a host that runs them.
  local PREP="podman --version; conmon --version; runc --version; criu --version; $CKPT --version"
  bytes=$(to_bytes "$size")
  name=e2e-$fs-$size
  img=$WORK/$name.img
  M=$WORK/mnt/$name
  mkdir -p "$M"
  ! mountpoint -q "$M" || die "$M is already mounted"
  rm -f "$img"
  # The changes, two podman archives and a restored copy, plus room for the runs.
  truncate -s $((bytes * 5 + (3 << 30))) "$img"
  log "$name: mkfs.$fs on $img"
  mkfs_img "$fs" "$img"
  mount_img "$fs" "$img" "$M" || die "cannot mount $img"
  mkdir -p "$M/out" "$M/arch"
  e2e_podman_up "$M/podman"
  podman run -d --name src localhost/bb /bin/sh -c "$E2E_LOOP" >/dev/null
  upper=$(podman inspect --format '{{.GraphDriver.Data.UpperDir}}' src)
  # Written from the host into the layer: the overlay has not looked /data up yet, so the
  # container sees it as its own change, and generating it does not copy through the overlay.
  log "$name: generating $size of rootfs changes in the container's layer"
  "$PY" "$GEN" "$upper/data" --seed "$SEED" --size "$bytes"
  sync -f "$M"
  podman exec src test -d /data/rootfs-diff || die "$name: the container does not see /data"
  meta "e2e_bytes.$fs.$size" "$(du -sb "$upper" | cut -f1)"

  userdata=$(podman inspect --format '{{.StaticDir}}' src)
  log "$name: making the archives to roll back to and to restore (untimed)"
  "$CKPT" podman checkpoint --leave-running src "$M/arch/c.tar" >/dev/null
  podman container checkpoint --leave-running --export "$M/arch/p.tar" --compress none src >/dev/null
  rm -f "$userdata/rootfs-diff.tar" "$userdata/deleted.files"
  local podman_outs="$userdata/rootfs-diff.tar $userdata/deleted.files"
  op=checkpoint-$size
  log "$name: checkpoint"
  for ((r = 1; r <= RUNS; r++)); do
    measure "$fs" "$op" podman "$r" "$M" "$fs" "$M/out/p.tar $podman_outs" \
      "podman container checkpoint --export $M/out/p.tar --compress none src"
    e2e_rollback "$M/arch/c.tar"
    measure "$fs" "$op" ckpt "$r" "$M" "$fs" "$M/out/c.tar" \
      "$CKPT podman checkpoint src $M/out/c.tar"
    e2e_rollback "$M/arch/c.tar"
    measure "$fs" "$op" podman-zstd "$r" "$M" "$fs" "$M/out/p.tar.zst $podman_outs" \
      "podman container checkpoint --export $M/out/p.tar.zst --compress zstd src"
    e2e_rollback "$M/arch/c.tar"
    measure "$fs" "$op" ckpt-zstd "$r" "$M" "$fs" "$M/out/c.tar.zst" \
      "$CKPT podman checkpoint --compress zstd src $M/out/c.tar.zst"
    e2e_rollback "$M/arch/c.tar"
    measure "$fs" "$op" podman-running "$r" "$M" "$fs" "$M/out/p.tar $podman_outs" \
      "podman container checkpoint --leave-running --export $M/out/p.tar --compress none src"
    measure "$fs" "$op" ckpt-running "$r" "$M" "$fs" "$M/out/c.tar" \
      "$CKPT podman checkpoint --leave-running src $M/out/c.tar"
  done
  op=restore-$size
  log "$name: restore"
  for ((r = 1; r <= RUNS; r++)); do
    measure "$fs" "$op" podman "$r" "$M" "$fs" "" \
      "podman container restore --import $M/arch/p.tar --name r-podman"
    if ((r == 1)); then e2e_check r-podman "$fs.$size.podman"; fi
    podman rm -f -t 0 r-podman >/dev/null
    measure "$fs" "$op" ckpt "$r" "$M" "$fs" "" "$CKPT podman restore --name r-ckpt $M/arch/c.tar"
    if ((r == 1)); then e2e_check r-ckpt "$fs.$size.ckpt"; fi
    podman rm -f -t 0 r-ckpt >/dev/null
  done
  e2e_podman_down
  cd "$WORK"
  teardown "$M"
  rm -f "$img"
}

# The end-to-end table: medians, and podman's time over ckpt's per case and compression.
e2e_report() {
  "$PY" - "$RES" <<'EOF'
import os, statistics, sys
res = sys.argv[1]
FACTOR = 10
runs, meta = {}, {}
for line in open(os.path.join(res, "e2e.tsv")):
    fs, op, tool, run, secs, rss, extra = line.rstrip("\n").split("\t")
    r = runs.setdefault((fs, op, tool), {"secs": [], "rss": [], "extra": []})
    r["secs"].append(float(secs)); r["rss"].append(int(rss)); r["extra"].append(int(extra))
for line in open(os.path.join(res, "meta.tsv")):
    k, _, v = line.rstrip("\n").partition("\t")
    meta[k] = v
LABEL = {
    ("checkpoint", "podman"): "podman container checkpoint --export --compress none",
    ("checkpoint", "ckpt"): "ckpt podman checkpoint",
    ("checkpoint", "podman-zstd"): "podman container checkpoint --export --compress zstd",
    ("checkpoint", "ckpt-zstd"): "ckpt podman checkpoint --compress zstd",
    ("checkpoint", "podman-running"): "podman container checkpoint --leave-running --export --compress none",
    ("checkpoint", "ckpt-running"): "ckpt podman checkpoint --leave-running",
    ("restore", "podman"): "podman container restore --import",
    ("restore", "ckpt"): "ckpt podman restore",
}
PEER = {"podman": "ckpt", "podman-zstd": "ckpt-zstd", "podman-running": "ckpt-running"}
FSN = {"btrfs": "Btrfs", "xfs": "XFS"}
def s(x): return "%.2f" % x if x < 10 else "%.1f" % x
def gib(b): return "%.2f GiB" % (b / (1 << 30)) if abs(b) >= 1 << 30 else "%.1f MiB" % (b / (1 << 20))
print("End to end with podman (rootfs changes written into a running container's layer; medians):")
print()
print("| FS | changes | case | tool | median s | min–max s (runs) | peak RSS MiB | extra disk | podman/ckpt | target |")
print("|---|---|---|---|--:|--:|--:|--:|--:|---|")
checks = []
seen = []
for k in runs:
    if k[:2] not in seen:
        seen.append(k[:2])
for fs, op in seen:
    case, size = op.split("-", 1)
    for tool in ("podman", "ckpt", "podman-zstd", "ckpt-zstd", "podman-running", "ckpt-running"):
        r = runs.get((fs, op, tool))
        if r is None:
            continue
        m = statistics.median(r["secs"])
        speed, target = "–", ""
        if tool in PEER and (fs, op, PEER[tool]) in runs:
            ck = statistics.median(runs[(fs, op, PEER[tool])]["secs"])
            speed = "%.1fx" % (m / ck) if ck > 0 else "inf"
            if tool == "podman":
                ok = m >= FACTOR * ck
                target = "ckpt ≥ %dx faster: %s" % (FACTOR, "PASS" if ok else "FAIL")
                checks.append(("%s %s %s: ckpt ≥ %dx faster than podman" % (FSN[fs], size, case, FACTOR), ok))
        print("| %s | %s | %s | %s | %s | %s–%s (%d) | %.1f | %s | %s | %s |" % (
            FSN[fs], size, case, LABEL[(case, tool)], s(m), s(min(r["secs"])), s(max(r["secs"])),
            len(r["secs"]), max(r["rss"]) / 1024, gib(statistics.median(r["extra"])), speed, target))
print()
failed = [d for d, ok in checks if not ok]
print("End-to-end targets: %d PASS, %d FAIL." % (len(checks) - len(failed), len(failed)))
for d in failed:
    print("- FAIL: " + d)
for k in sorted(meta):
    if k.startswith("e2e_verify."):
        print("- restored by %s: %s" % (k[len("e2e_verify."):], meta[k]))
    elif k.startswith("e2e_bytes."):
        print("- rootfs changes %s: %s apparent" % (k[len("e2e_bytes."):], gib(int(meta[k]))))
    elif k == "na.e2e":
        print("- end to end skipped: " + meta[k])
print()
EOF
}

if ((E2E)); then
  why=$(e2e_unusable)
  if [[ -n $why ]]; then
    ((E2E != 2)) || die "--e2e: $why"
    log "skipping the end-to-end section: $why"
    meta na.e2e "$why"
  else
    RUNS_TSV=$RES/e2e.tsv
    : >"$RUNS_TSV"
    for fs in $FSES; do
      [[ $fs == btrfs || $fs == xfs ]] || continue
      for size in $E2E_SIZES; do
        bench_e2e "$fs" "$size"
      done
    done
    RUNS_TSV=$RES/runs.tsv
  fi
fi

# ---------------------------------------------------------------------------
# Registries: ckpt push/pull vs skopeo copy through a local docker-registry
# ---------------------------------------------------------------------------
REG_DIR=
REG_PORT=

# reg_start DIR: a docker-registry on 127.0.0.1 (the same port on a restart) with its storage
# in DIR/storage and its access log (combined format, which it writes to stdout) in
# DIR/access.log.
reg_start() {
  local i
  REG_DIR=$1
  if [[ -z $REG_PORT ]]; then
    REG_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  mkdir -p "$REG_DIR/storage"
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$REG_DIR/storage" "$REG_PORT" >"$REG_DIR/config.yml"
  docker-registry serve "$REG_DIR/config.yml" >>"$REG_DIR/access.log" 2>>"$REG_DIR/registry.err" &
  REG_PID=$!
  for ((i = 0; i < 200; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$REG_PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "docker-registry did not listen on 127.0.0.1:$REG_PORT (see $REG_DIR/registry.err)"
}

reg_stop() {
  kill "$REG_PID" 2>/dev/null || true
  wait "$REG_PID" 2>/dev/null || true
  REG_PID=
}

# reg_empty: the registry again, with nothing stored.
reg_empty() {
  reg_stop
  rm -rf "$REG_DIR/storage"
  reg_start "$REG_DIR"
}

# reg_measure OP TOOL RUN OUTPUTS CMD: measure, and record in registry-bytes.tsv how much the
# registry's storage grew (bytes uploaded) and the bytes its access log says it sent for
# blob GETs during the run.
reg_measure() {
  local before lines after sent
  before=$(du -sb "$REG_DIR/storage" | cut -f1)
  lines=$(wc -l <"$REG_DIR/access.log")
  measure registry "$1" "$2" "$3" "$M" btrfs "$4" "$5"
  after=$(du -sb "$REG_DIR/storage" | cut -f1)
  sent=$(tail -n +$((lines + 1)) "$REG_DIR/access.log" |
    awk -F'"' '$2 ~ /^GET \/v2\/.*\/blobs\/sha256:/ { split($3, a, " "); s += a[2] } END { printf "%.0f", s }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$((after - before))" "$sent" >>"$RES/registry-bytes.tsv"
}

# reg_second_checkpoint SRC DST: DST, a reflinked copy of SRC in which 4 KiB of one file in
# 64 are rewritten (files of at least one byte, in name order; not the dumps, which hold the
# container's configuration), and of the smallest of the large files (>= 1 MiB), which
# therefore gets a new layer: ~1.6% of the files.
reg_second_checkpoint() {
  cp -a --reflink=always "$1" "$2"
  "$PY" - "$2" <<'EOF' >>"$RES/meta.tsv"
import hashlib, os, sys
root = sys.argv[1]
files = []
for d, dirs, names in os.walk(root):
    dirs.sort()
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > 0:
            files.append(p)
large = min((p for p in files if os.path.getsize(p) >= 1 << 20), key=os.path.getsize)
dumps = [os.path.join(root, n) for n in ("config.dump", "spec.dump")]
chosen = [p for i, p in enumerate(files) if i % 64 == 0 and p != large and p not in dumps] + [large]
for i, p in enumerate(chosen):
    n = min(4096, os.path.getsize(p))
    data = b"".join(hashlib.sha256(b"%d-%d" % (i, k)).digest() for k in range(n // 32 + 1))[:n]
    fd = os.open(p, os.O_WRONLY)
    os.pwrite(fd, data, os.path.getsize(p) // 2 // 4096 * 4096 if n == 4096 else 0)
    os.close(fd)
print("reg_changed\t%d of %d files, with %s (%d bytes)" % (
    len(chosen), len(files), os.path.relpath(large, root), os.path.getsize(large)))
EOF
}

# reg_oci_layout TREE DIR: an OCI layout (tag cp) whose one uncompressed layer is a tar of
# TREE, as buildah makes a checkpoint image.
reg_oci_layout() {
  mkdir -p "$2/blobs/sha256"
  tar -C "$1" --sort=name --numeric-owner -cf "$2/layer.tar" .
  "$PY" - "$2" "$(uname -m)" <<'EOF'
import hashlib, json, os, sys
d, machine = sys.argv[1], sys.argv[2]
def put(data=None, path=None):
    h = hashlib.sha256()
    if path:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        size = os.path.getsize(path)
        os.rename(path, os.path.join(d, "blobs/sha256", h.hexdigest()))
    else:
        h.update(data)
        size = len(data)
        open(os.path.join(d, "blobs/sha256", h.hexdigest()), "wb").write(data)
    return {"digest": "sha256:" + h.hexdigest(), "size": size}
layer = put(path=os.path.join(d, "layer.tar"))
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
config = put(json.dumps({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
MT = "application/vnd.oci.image.manifest.v1+json"
manifest = put(json.dumps({
    "schemaVersion": 2, "mediaType": MT,
    "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
    "layers": [dict(layer, mediaType="application/vnd.oci.image.layer.v1.tar")]}).encode())
open(os.path.join(d, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [dict(manifest, mediaType=MT, annotations={
    "org.opencontainers.image.ref.name": "cp"})]}, open(os.path.join(d, "index.json"), "w"))
EOF
}

# bench_registry: on a Btrfs image holding the tree, its second checkpoint, their archives and
# OCI layouts, the registry's storage and ckpt's stores: push and pull timed for ckpt and
# skopeo (--preserve-digests: the layer is sent as it is, uncompressed, like ckpt's).
bench_registry() {
  local r ref push pull sk="skopeo copy -q --preserve-digests"
  setup_fs registry btrfs $((SIZE_BYTES * 8 + (4 << 30))) \
    "gen=$GEN_SUM shape=checkpoint size=$SIZE_BYTES seed=$SEED" --size "$SIZE_BYTES"
  M=$MNT
  cd "$M"
  rm -rf "$M/data2" "$M/reg" "$M/store" "$M/pstore"
  # The generated dumps are bytes of the right size; push reads the annotations from them.
  printf '{"name":"bench","runtime":"runc","rootfsImageName":"localhost/bb:latest"}\n' >"$M/data/config.dump"
  printf '{"ociVersion":"1.0.0","annotations":{"io.container.manager":"libpod"}}\n' >"$M/data/spec.dump"
  touch -d @1700000000 "$M/data/config.dump" "$M/data/spec.dump"
  log "registry: the second checkpoint, the archives and the OCI layouts (untimed)"
  reg_second_checkpoint "$M/data" "$M/data2"
  "$CKPT" export "$M/data" "$M/arch/cp1.tar" >/dev/null
  "$CKPT" export "$M/data2" "$M/arch/cp2.tar" >/dev/null
  reg_oci_layout "$M/data" "$M/arch/oci1"
  reg_oci_layout "$M/data2" "$M/arch/oci2"
  reg_start "$M/reg"
  ref=127.0.0.1:$REG_PORT
  push="$CKPT push --json --tls-verify=false --store $M/store"
  pull="$CKPT pull --json --tls-verify=false --store $M/pstore"
  RUNS_TSV=$RES/registry.tsv
  : >"$RUNS_TSV"
  : >"$RES/registry-bytes.tsv"
  log "registry: push (each run into an empty registry and store)"
  for ((r = 1; r <= RUNS; r++)); do
    reg_empty
    rm -rf "$M/store"
    reg_measure push-1 ckpt-push "$r" "" "$push $M/arch/cp1.tar $ref/ckpt/app:cp1"
    reg_measure push-2 ckpt-push "$r" "" "$push $M/arch/cp2.tar $ref/ckpt/app:cp2"
    reg_empty
    reg_measure push-1 skopeo "$r" "" "$sk --dest-tls-verify=false oci:$M/arch/oci1:cp docker://$ref/skopeo/app:cp1"
    reg_measure push-2 skopeo "$r" "" "$sk --dest-tls-verify=false oci:$M/arch/oci2:cp docker://$ref/skopeo/app:cp2"
  done
  log "registry: pull (each first pull into an empty store)"
  reg_empty
  rm -rf "$M/store"
  $push "$M/arch/cp1.tar" "$ref/ckpt/app:cp1" >/dev/null
  $push "$M/arch/cp2.tar" "$ref/ckpt/app:cp2" >/dev/null
  $sk --dest-tls-verify=false "oci:$M/arch/oci1:cp" "docker://$ref/skopeo/app:cp1"
  for ((r = 1; r <= RUNS; r++)); do
    rm -rf "$M/pstore"
    reg_measure pull-1 ckpt-pull "$r" "$M/out/p1.tar" "$pull $ref/ckpt/app:cp1 $M/out/p1.tar"
    reg_measure pull-2 ckpt-pull "$r" "$M/out/p2.tar" "$pull $ref/ckpt/app:cp2 $M/out/p2.tar"
    rm -rf "$M/pstore"
    if ((r == 1)); then
      reg_measure pull-1 ckpt-pull-import "$r" "" "$pull $ref/ckpt/app:cp1 --import $M/out/dest"
      log "registry: checking the pulled tree (untimed)"
      # The image's root is a scratch directory (no ./ member): its mode and mtime are the
      # importer's, not the tree's.
      chmod --reference="$M/data" "$M/out/dest"
      touch -r "$M/data" "$M/out/dest"
      verify registry "$M/data" "$M/out/dest"
      rm -rf "$M/out/dest"
    else
      reg_measure pull-1 ckpt-pull-import "$r" "$M/out/dest" "$pull $ref/ckpt/app:cp1 --import $M/out/dest"
    fi
    reg_measure pull-1 skopeo "$r" "$M/out/sk" \
      "$sk --dest-oci-accept-uncompressed-layers --src-tls-verify=false docker://$ref/skopeo/app:cp1 oci:$M/out/sk:cp"
  done
  RUNS_TSV=$RES/runs.tsv
  reg_stop
  rm -rf "$M/out" "$M/arch" "$M/data2" "$M/reg" "$M/store" "$M/pstore"
  cd "$WORK"
  teardown "$M"
}

# The registry table: medians of seconds and of bytes moved, and the targets.
reg_report() {
  "$PY" - "$RES" <<'EOF'
import os, statistics, sys
res = sys.argv[1]
runs, meta = {}, {}
for line in open(os.path.join(res, "registry.tsv")):
    _fs, op, tool, run, secs, rss, _extra = line.rstrip("\n").split("\t")
    r = runs.setdefault((op, tool), {"secs": [], "rss": [], "up": [], "sent": []})
    r["secs"].append(float(secs)); r["rss"].append(int(rss))
for line in open(os.path.join(res, "registry-bytes.tsv")):
    op, tool, run, up, sent = line.rstrip("\n").split("\t")
    runs[(op, tool)]["up"].append(int(up)); runs[(op, tool)]["sent"].append(int(sent))
for line in open(os.path.join(res, "meta.tsv")):
    k, _, v = line.rstrip("\n").partition("\t")
    meta[k] = v
LABEL = {
    ("push-1", "ckpt-push"): "ckpt push (first checkpoint)",
    ("push-1", "skopeo"): "skopeo copy oci: docker:// (first checkpoint)",
    ("push-2", "ckpt-push"): "ckpt push (second checkpoint)",
    ("push-2", "skopeo"): "skopeo copy oci: docker:// (second checkpoint)",
    ("pull-1", "ckpt-pull"): "ckpt pull REF OUT (empty store)",
    ("pull-1", "ckpt-pull-import"): "ckpt pull REF --import DEST (empty store)",
    ("pull-1", "skopeo"): "skopeo copy docker:// oci: (first checkpoint)",
    ("pull-2", "ckpt-pull"): "ckpt pull REF OUT (second checkpoint, store has the first)",
}
def med(r, k): return statistics.median(r[k]) if r[k] else 0
def s(x): return "%.2f" % x if x < 10 else "%.1f" % x
def mib(b): return "%.1f MiB" % (b / (1 << 20))
print("Registries (a local docker-registry on Btrfs; medians; bytes uploaded = growth of its storage, bytes sent = its access log's blob GETs):")
print()
print("| case | median s | min–max s (runs) | peak RSS MiB | bytes uploaded | bytes sent |")
print("|---|--:|--:|--:|--:|--:|")
for key, label in LABEL.items():
    r = runs.get(key)
    if r is None:
        continue
    print("| %s | %s | %s–%s (%d) | %.1f | %s | %s |" % (
        label, s(med(r, "secs")), s(min(r["secs"])), s(max(r["secs"])), len(r["secs"]),
        max(r["rss"]) / 1024, mib(med(r, "up")), mib(med(r, "sent"))))
print()
checks = []
def share(op2, op1, tool, key):
    if (op2, tool) in runs and (op1, tool) in runs:
        a, b = med(runs[(op2, tool)], key), med(runs[(op1, tool)], key)
        return a / b if b else float("inf")
    return None
x = share("push-2", "push-1", "ckpt-push", "up")
if x is not None:
    checks.append(("second push uploads <= 5%% of the first's bytes: %.1f%%" % (100 * x), x <= 0.05))
x = share("pull-2", "pull-1", "ckpt-pull", "sent")
if x is not None:
    checks.append(("second pull downloads <= 5%% of the first's bytes: %.1f%%" % (100 * x), x <= 0.05))
if ("pull-1", "ckpt-pull") in runs and ("pull-1", "ckpt-pull-import") in runs:
    a, b = med(runs[("pull-1", "ckpt-pull-import")], "secs"), med(runs[("pull-1", "ckpt-pull")], "secs")
    checks.append(("pull --import within 1.2x of pull: %.2fx" % (a / b), a <= 1.2 * b))
for key in (("push-1", "skopeo"), ("push-2", "skopeo"), ("pull-1", "skopeo")):
    mine = {"push-1": "ckpt-push", "push-2": "ckpt-push", "pull-1": "ckpt-pull"}[key[0]]
    if key in runs and (key[0], mine) in runs:
        print("- %s: skopeo / ckpt = %.2fx" % (key[0], med(runs[key], "secs") / med(runs[(key[0], mine)], "secs")))
failed = [d for d, ok in checks if not ok]
print("- registry targets: %d PASS, %d FAIL" % (len(checks) - len(failed), len(failed)))
for d, ok in checks:
    print("- %s: %s" % ("PASS" if ok else "FAIL", d))
if "reg_changed" in meta:
    print("- second checkpoint: %s changed" % meta["reg_changed"])
if "verify.registry" in meta:
    print("- ckpt pull --import of the first checkpoint vs the tree: " + meta["verify.registry"])
print()
EOF
}

if ((REGISTRY)); then
  if ! command -v docker-registry >/dev/null 2>&1 || ! command -v skopeo >/dev/null 2>&1; then
    die "the registry section needs docker-registry and skopeo (--no-registry skips it)"
  fi
  bench_registry
fi

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
if [[ -s $RES/runs.tsv ]]; then "$PY" "$REPORT" "$RES" >>"$RES/report.md"; fi
if [[ -s $RES/registry.tsv ]]; then reg_report >>"$RES/report.md"; fi
if [[ -s $RES/e2e.tsv ]]; then
  e2e_report >>"$RES/report.md"
elif [[ -n ${why:-} ]]; then
  printf -- '- end to end skipped: %s\n\n' "$why" >>"$RES/report.md"
fi
echo "- total time: $(((SECONDS - T_START) / 60)) min $(((SECONDS - T_START) % 60)) s; raw runs: $RES/runs.tsv, $RES/e2e.tsv" >>"$RES/report.md"
cat "$RES/report.md"
log "report: $RES/report.md"
