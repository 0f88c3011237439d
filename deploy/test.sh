#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it too).
# Installs what the tests need when it runs as root on Debian, then runs every test of the
# workspace in one release build, so the netns tests and the unit tests share one compile.
# Netns tests need root; as another user they print "skipped: needs root" and pass.
set -euo pipefail
cd "$(dirname "$0")/.."

# A tool on PATH, or in an sbin directory (dockerd is in /usr/sbin, on root's PATH only).
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}
# dockerd and busybox-static: the Docker plugin tests (tests/it/docker.rs) run real daemons with
# an offline image made of the static busybox. Without dockerd they print "skipped" and pass;
# without a static /bin/busybox they fail, saying so.
# podman and containernetworking-plugins: the CNI plugin tests (tests/it/cni.rs chains the
# reference portmap plugin, which needs iptables, a dependency of the package;
# tests/it/cni_podman.rs runs podman with its CNI backend). Without them those parts print
# "skipped" and pass. podman comes without its recommends (buildah, slirp4netns, ...).
# bind9-dnsutils: `dig`, which the resolver tests (tests/it/dns*.rs) ask with.
need_pkgs=()
for tool in ip:iproute2 ping:iputils-ping nc:netcat-openbsd tcpdump:tcpdump tshark:tshark iperf3:iperf3 ethtool:ethtool python3:python3 nft:nftables dockerd:docker.io busybox:busybox-static podman:podman dig:bind9-dnsutils; do
  have "${tool%%:*}" || need_pkgs+=("${tool#*:}")
done
[ -x /usr/lib/cni/portmap ] || need_pkgs+=(containernetworking-plugins)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "warning: missing ${need_pkgs[*]}; the netns tests that need them will fail" >&2
  fi
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The previous release's vxnetd, for the rolling-upgrade test: built from git history into
# target/prev (cached; about two minutes the first time). Without git history the test skips.
if [ -z "${VXNET_PREV_VXNETD:-}" ]; then
  prev_rev=$(grep -v '^#' deploy/previous-release | head -n1)
  if git cat-file -e "${prev_rev}^{commit}" 2>/dev/null; then
    prev_src=target/prev/src-$prev_rev
    if [ ! -x "target/prev/vxnetd-$prev_rev" ]; then
      echo "building the previous release's vxnetd ($prev_rev) for the upgrade test"
      rm -rf "$prev_src" && mkdir -p "$prev_src"
      git archive "$prev_rev" | tar -x -C "$prev_src"
      cargo build --release --quiet --bin vxnetd --manifest-path "$prev_src/Cargo.toml" \
        --target-dir target/prev/build
      cp target/prev/build/release/vxnetd "target/prev/vxnetd-$prev_rev"
      rm -rf "$prev_src" target/prev/build
    fi
    export VXNET_PREV_VXNETD="$PWD/target/prev/vxnetd-$prev_rev"
  else
    echo "warning: commit $prev_rev is not in this clone: the upgrade test will skip" >&2
  fi
fi

# Deterministic Raft simulator seeds (raise locally for a soak: VXNET_SIM_SEEDS=5000).
export VXNET_SIM_SEEDS="${VXNET_SIM_SEEDS:-200}"
# fault-injection: hidden vxnetd flags the fault tests use to make a thread panic.
if [ "$#" -gt 0 ]; then
  exec cargo test --workspace --release --features vxnet/fault-injection "$@"
fi
# sec_flood compares commit rates with and without a connection flood whose stranger runs on
# these same cores (on real hosts it runs elsewhere): it runs alone, after everything else, so
# that no other test's load lands in only some of its windows.
flood=sec_flood::flood_of_500_strangers_keeps_commit_rate
cargo test --workspace --release --features vxnet/fault-injection -- --skip "$flood"
exec cargo test --release --features vxnet/fault-injection -p vxnet --test it -- --exact "$flood"
