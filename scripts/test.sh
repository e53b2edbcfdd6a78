#!/usr/bin/env bash
# Runs ckpt's whole test suite on a fresh Debian 12 machine, as root:
#   1. installs the tools the tests use (only those missing; apt-get update once first),
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings, cargo test --release
#      (unit, integration and doc tests),
#   3. always (trap) lists and cleans up loop mounts and scratch dirs the tests left behind.
# Exits non-zero if anything fails. Under CI (CI=true) tests fail instead of skipping
# when a capability (root, loop devices, mkfs) is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# 1. Tools. Command -> Debian package that provides it.
# ---------------------------------------------------------------------------
declare -A pkg_of=(
  [mkfs.btrfs]=btrfs-progs
  [btrfs]=btrfs-progs
  [mkfs.xfs]=xfsprogs
  [getfattr]=attr
  [setfattr]=attr
  [bsdtar]=libarchive-tools
  [go]=golang-go
  [zstd]=zstd
  [filefrag]=e2fsprogs
  [mkfs.ext4]=e2fsprogs
  [python3]=python3
  [setcap]=libcap2-bin
  [getcap]=libcap2-bin
  [findmnt]=util-linux
  [mount]=mount
  [umount]=mount
  [losetup]=mount
  [tar]=tar
  [sync]=coreutils
  [man]=man-db
  # A path, not `time`: that name is also a shell keyword.
  [/usr/bin/time]=time
)
missing=()
for cmd in "${!pkg_of[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$cmd && ! -x /sbin/$cmd ]]; then
    missing+=("${pkg_of[$cmd]}")
  fi
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [[ $EUID -ne 0 ]]; then
    log "missing packages ${missing[*]} and not root: cannot install them" >&2
    exit 1
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Tools in /usr/sbin must be found even from a non-login shell.
export PATH="$PATH:/usr/sbin:/sbin"

if ! command -v cargo >/dev/null 2>&1; then
  [[ -f "$HOME/.cargo/env" ]] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "cargo not found: install a Rust toolchain (edition 2024, e.g. via rustup) first"
  exit 1
fi

if [[ $EUID -ne 0 ]]; then
  log "WARNING: not root: filesystem tests will be skipped (or fail under CI)"
fi
# Loop devices: make sure the driver is there (harmless if built in or loaded).
if [[ $EUID -eq 0 && ! -e /dev/loop-control ]]; then
  modprobe loop 2>/dev/null || log "WARNING: no /dev/loop-control and modprobe loop failed"
fi

# ---------------------------------------------------------------------------
# 2. Scratch space for this run, cleaned up whatever happens.
# ---------------------------------------------------------------------------
run_dir=$(mktemp -d /var/tmp/ckpt-test-run.XXXXXX)
export CKPT_TEST_TMPDIR="$run_dir"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Leftover mounts of this run (deepest first), then any other ckpt-test mounts.
  local leftovers
  leftovers=$(findmnt -rn -o TARGET | grep -F "$run_dir/" | sort -r || true)
  if [[ -n "$leftovers" ]]; then
    log "leftover test mounts (unmounting):"
    sed 's/^/    /' <<<"$leftovers" >&2
    local mp
    while IFS= read -r mp; do
      umount "$mp" 2>/dev/null || umount -l "$mp" || true
    done <<<"$leftovers"
    rc=$((rc == 0 ? 1 : rc)) # a test that leaks a mount is a failure
  fi
  # Loop devices still backed by an image of this run (autoclear normally frees them).
  local dev
  for dev in $(losetup -n -O NAME,BACK-FILE -l 2>/dev/null | awk -v d="$run_dir/" 'index($0, d) {print $1}'); do
    log "detaching leftover loop device $dev"
    losetup -d "$dev" || true
  done
  local others
  others=$(findmnt -rn -o TARGET | grep -F '/ckpt-test.' || true)
  if [[ -n "$others" ]]; then
    log "NOTE: other ckpt-test mounts exist (not from this run, left alone):"
    sed 's/^/    /' <<<"$others" >&2
  fi
  rm -rf --one-file-system "$run_dir" || true
  if ((rc == 0)); then log "all checks passed"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# 3. Checks.
# ---------------------------------------------------------------------------
# Every check runs even if an earlier one failed, so one run reports everything; the
# script fails if any of them failed.
failed=()
check() {
  log "$*"
  if ! "$@"; then
    failed+=("$*")
    log "FAILED: $*"
  fi
}
check cargo fmt --check
check cargo clippy --all-targets -- -D warnings
# Unit, integration and doc tests; --no-fail-fast runs every test binary.
check cargo test --release --no-fail-fast

if ((${#failed[@]})); then
  log "failed checks:"
  printf '    %s\n' "${failed[@]}" >&2
  exit 1
fi
