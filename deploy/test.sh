#!/usr/bin/env bash
# The test command (README's second command; .ci/run calls it too).
# Installs what the tests need when it runs as root on Debian, then runs every test of the
# workspace in one release build, so the netns tests and the unit tests share one compile.
# Netns tests need root; as another user they print "skipped: needs root" and pass.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for tool in ip:iproute2 ping:iputils-ping nc:netcat-openbsd tcpdump:tcpdump tshark:tshark iperf3:iperf3 ethtool:ethtool python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool#*:}")
done
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

# Deterministic Raft simulator seeds (raise locally for a soak: VXNET_SIM_SEEDS=5000).
export VXNET_SIM_SEEDS="${VXNET_SIM_SEEDS:-200}"
exec cargo test --workspace --release "$@"
