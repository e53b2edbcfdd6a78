#!/usr/bin/env bash
# Runs ckpt's whole test suite on a fresh Debian 12 machine, as root:
#   1. installs the tools the tests use (only those missing; apt-get update once first),
#      among them podman, runc, conmon and busybox-static for the real-container tests, and,
#      when `criu check` fails (Debian's CRIU 3.17 does on recent kernels) or CRIU is
#      missing, builds CRIU 4.2 from ../shared/vendor/criu-4.2.tar.xz (beside the checkout),
#      caches the binary under /var/cache/ckpt-criu/SHA256-OF-TARBALL/criu and installs it
#      as /usr/local/sbin/criu,
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings, cargo test --release
#      (unit, integration and doc tests),
#   3. always (trap) lists and cleans up podman containers and images, loop mounts and
#      scratch dirs the tests left behind.
# Exits non-zero if anything fails. Under CI (CI=true) tests fail instead of skipping
# when a capability (root, loop devices, mkfs) is missing, and a missing podman or a CRIU
# that does not work fails the script before the tests run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

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
  [fincore]=util-linux
  [mount]=mount
  [umount]=mount
  [losetup]=mount
  [tar]=tar
  [sync]=coreutils
  [man]=man-db
  # A path, not `time`: that name is also a shell keyword.
  [/usr/bin/time]=time
  [podman]=podman
  [runc]=runc
  [conmon]=conmon
  # htpasswd -Bbn writes the users file of the registry tests' auth: htpasswd registry.
  [htpasswd]=apache2-utils
)
# Packages whose presence a command does not tell: busybox-static (the dynamic busybox
# package also installs /bin/busybox, but the test image needs the static one), skopeo and
# docker-registry (registry tests), and what building CRIU 4.2 needs.
criu_build_deps=(build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
  protobuf-compiler python3-protobuf libnl-3-dev libnl-route-3-dev libnet1-dev libcap-dev libbsd-dev
  libgnutls28-dev libnftables-dev libdrm-dev uuid-dev libaio-dev libselinux1-dev libelf-dev iptables)
packages=(busybox-static skopeo docker-registry "${criu_build_deps[@]}")
missing=()
for cmd in "${!pkg_of[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$cmd && ! -x /sbin/$cmd ]]; then
    missing+=("${pkg_of[$cmd]}")
  fi
done
for pkg in "${packages[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$pkg")
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
# Tools in /usr/sbin must be found even from a non-login shell; /usr/local/sbin first, so
# that runc runs the CRIU installed below, not an older one in /usr/sbin.
export PATH="/usr/local/sbin:$PATH:/usr/sbin:/sbin"

# CRIU: podman checkpoints through runc, which runs `criu` from PATH.
criu_works() { command -v criu >/dev/null 2>&1 && criu check >/dev/null 2>&1; }
install_criu() {
  # The shared dir is a sibling of the checkout; a git worktree finds it beside the main
  # checkout.
  local tarball=$repo/../shared/vendor/criu-4.2.tar.xz sum cache build common
  if [[ ! -f $tarball ]] && common=$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null); then
    tarball=$(dirname "$common")/../shared/vendor/criu-4.2.tar.xz
  fi
  if [[ ! -f $tarball ]]; then
    log "WARNING: no $repo/../shared/vendor/criu-4.2.tar.xz: cannot build CRIU 4.2"
    return 1
  fi
  sum=$(sha256sum "$tarball" | cut -d ' ' -f 1)
  cache=/var/cache/ckpt-criu/$sum
  if [[ ! -x $cache/criu ]]; then
    log "building CRIU from $tarball (takes a minute or two)"
    mkdir -p "$cache"
    build=$(mktemp -d "$cache/build.XXXXXX")
    if ! (tar -C "$build" --strip-components=1 -xJf "$tarball" &&
      make -C "$build" -j"$(nproc)" criu >"$build.log" 2>&1 &&
      install -m 0755 "$build/criu/criu" "$cache/criu.new" && mv "$cache/criu.new" "$cache/criu"); then
      log "WARNING: building CRIU failed; last lines of $build.log:"
      tail -n 20 "$build.log" >&2 || true
      rm -rf "$build"
      return 1
    fi
    rm -rf "$build" "$build.log"
  fi
  log "installing $cache/criu as /usr/local/sbin/criu"
  install -m 0755 "$cache/criu" /usr/local/sbin/criu
}
if ! criu_works && [[ $EUID -eq 0 ]]; then
  install_criu || true
fi
if ! criu_works; then
  if [[ -n ${CI:-} ]]; then
    log "CI is set and \`criu check\` fails: the real-podman tests cannot run"
    exit 1
  fi
  log "WARNING: \`criu check\` fails: the real-podman tests will be skipped"
fi
if ! podman --version >/dev/null 2>&1; then
  if [[ -n ${CI:-} ]]; then
    log "CI is set and podman does not run: the real-podman tests cannot run"
    exit 1
  fi
  log "WARNING: podman does not run: the real-podman tests will be skipped"
fi

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
# Some tests run ckpt as nobody in scratch dirs beneath it: it must be traversable.
chmod 0755 "$run_dir"
export CKPT_TEST_TMPDIR="$run_dir"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Containers of this run's private podman storage roots (tests/common Podman: a
  # storage.conf beside the storage): removing them stops their processes and unmounts
  # their overlays, so the loop filesystems below can be unmounted.
  local conf dir
  while IFS= read -r conf; do
    dir=$(dirname "$conf")
    [[ -f $dir/containers.conf ]] || continue
    if [[ -n $(CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$conf \
      podman ps -a -q 2>/dev/null) ]]; then
      log "leftover podman containers in $dir (removing)"
      rc=$((rc == 0 ? 1 : rc)) # a test that leaks a container is a failure
    fi
    CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$conf \
      podman rm -f -a -t 0 >/dev/null 2>&1 || true
    CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$conf \
      podman rmi -a -f >/dev/null 2>&1 || true
  done < <(find "$run_dir" -maxdepth 4 -name storage.conf 2>/dev/null || true)
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
