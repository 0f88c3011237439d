#!/usr/bin/env bash
# vxnet demo: a local 3-host cluster in network namespaces, two overlay networks, two containers
# per host, and a measured ping matrix.
#
#   deploy/demo.sh up     # build, start, show it working (agents keep running)
#   deploy/demo.sh down   # remove everything
#
# Hosts are namespaces vxdemo-h1..3 joined by veth to a switch namespace (underlay
# 192.168.100.0/24); containers are namespaces vxdemo-c<host><n>. Nothing is routed out of them.
set -euo pipefail

PREFIX=vxdemo
RUN=/run/vxnet-demo
STATE=/var/lib/vxnet-demo
HOSTS=3
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# VXNET_BIN_DIR: use already built binaries (the tests do) instead of building.
BIN_DIR=${VXNET_BIN_DIR:-$ROOT/target/release}
VXNETD=$BIN_DIR/vxnetd
VXNET=$BIN_DIR/vxnet

die() {
  echo "demo: $*" >&2
  # The agents' last words, so that a failure seen only in CI can be read there.
  for log in "$RUN"/h*.log; do
    [ -e "$log" ] || continue
    echo "--- tail of $log" >&2
    tail -n 40 "$log" >&2
  done
  exit 1
}
[ "$(id -u)" = 0 ] || die "run as root (network namespaces need it): sudo $0 ${1:-up}"

vx() { local h=$1; shift; "$VXNET" -H "$RUN/h$h.sock" "$@"; }

down() {
  if [ -d "$RUN" ]; then
    for pidfile in "$RUN"/*.pid; do
      [ -e "$pidfile" ] || continue
      kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
  fi
  pkill -9 -f "iperf3 -s -1 -p 5201 --logfile $RUN" 2>/dev/null || true
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  # The agents write each container's resolv.conf there (removed on disconnect; not after kill -9).
  rm -rf "$RUN" "$STATE" /etc/netns/"$PREFIX"-*
}

install_deps() {
  local missing=()
  for tool in ip:iproute2 ping:iputils-ping iperf3:iperf3 python3:python3 nft:nftables; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "demo: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ -n "${VXNET_BIN_DIR:-}" ]; then
    [ -x "$VXNETD" ] && [ -x "$VXNET" ] || die "no vxnetd/vxnet in $VXNET_BIN_DIR"
    return
  fi
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
  echo "demo: building (cargo build --release)"
  cargo build --release --quiet --bin vxnetd --bin vxnet
}

wait_until() { # seconds, description, command...
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 0.2
  done
}

members_of() { vx "$1" cluster members --format json 2>/dev/null | grep -c '"name"' || true; }

up() {
  install_deps
  down
  mkdir -p "$RUN" "$STATE"
  ip netns add $PREFIX-sw
  ip -n $PREFIX-sw link add br0 type bridge
  ip -n $PREFIX-sw link set br0 up
  for h in $(seq 1 $HOSTS); do
    ip netns add $PREFIX-h$h
    ip link add ${PREFIX}u$h netns $PREFIX-h$h type veth peer name ${PREFIX}s$h netns $PREFIX-sw
    ip -n $PREFIX-h$h link set ${PREFIX}u$h name ul0
    ip -n $PREFIX-h$h addr add 192.168.100.$h/24 dev ul0
    ip -n $PREFIX-h$h link set ul0 up
    ip -n $PREFIX-h$h link set lo up
    ip -n $PREFIX-sw link set ${PREFIX}s$h master br0 up
  done
  local token=""
  for h in $(seq 1 $HOSTS); do
    # h1 creates the cluster (its CA and a join secret); the others join with its join token.
    local role=(--join 192.168.100.1:7946 --token "$token")
    [ "$h" = 1 ] && role=(--bootstrap)
    setsid ip netns exec $PREFIX-h$h "$VXNETD" --name h$h --data-dir "$STATE/h$h" \
      --underlay 192.168.100.$h --api "$RUN/h$h.sock" "${role[@]}" \
      >"$RUN/h$h.log" 2>&1 </dev/null &
    echo $! >"$RUN/h$h.pid"
    wait_until 30 "agent h$h" vx "$h" cluster members
    if [ "$h" = 1 ]; then token=$(vx 1 cluster join-token -q); fi
  done
  for h in $(seq 1 $HOSTS); do
    wait_until 60 "h$h to see $HOSTS members" test "$(members_of "$h")" = "$HOSTS"
  done

  echo; echo "== vxnet cluster members"; vx 1 cluster members
  vx 1 network create --subnet 10.20.1.0/24 --label demo=1 frontend >/dev/null
  vx 2 network create --subnet 10.20.2.0/24 --label demo=1 backend >/dev/null
  echo; echo "== vxnet network ls"; vx 3 network ls

  # Two containers per host: c<h>1 on frontend, c<h>2 on backend.
  local containers=() nets=() ips=()
  for h in $(seq 1 $HOSTS); do
    for n in 1 2; do
      local c=$PREFIX-c$h$n net=frontend
      [ "$n" = 2 ] && net=backend
      ip netns add "$c"
      ip -n "$c" link set lo up
      vx "$h" network connect "$net" "$c"
      containers+=("$c"); nets+=("$net")
      ips+=("$(ip -n "$c" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)")
    done
  done
  echo; echo "== vxnet network inspect frontend (containers)"
  vx 1 network inspect -f '{{range .Containers}}{{.Name}} {{.IPv4Address}} on {{.Host}}{{println}}{{end}}' frontend

  echo; echo "== ping matrix (row pings column; same network should answer, other network not)"
  local failures=0 header="                "
  for c in "${containers[@]}"; do header+=$(printf '%-8s' "${c#$PREFIX-}"); done
  echo "$header"
  for i in "${!containers[@]}"; do
    local row
    row=$(printf '%-16s' "${containers[$i]#$PREFIX-}")
    for j in "${!containers[@]}"; do
      if [ "$i" = "$j" ]; then row+=$(printf '%-8s' "-"); continue; fi
      local got=no want=no
      [ "${nets[$i]}" = "${nets[$j]}" ] && want=yes
      # Two tries: the very first packet of a pair may wait for the remote host's apply.
      if ip netns exec "${containers[$i]}" ping -n -q -c 1 -W 1 "${ips[$j]}" >/dev/null 2>&1 ||
         { [ "$want" = yes ] && ip netns exec "${containers[$i]}" ping -n -q -c 1 -W 1 "${ips[$j]}" >/dev/null 2>&1; }; then
        got=yes
      fi
      [ "$got" = "$want" ] || failures=$((failures + 1))
      local mark="$got"
      [ "$got" = "$want" ] || mark="$got!"
      row+=$(printf '%-8s' "$mark")
    done
    echo "$row"
  done

  echo; echo "== iperf3: ${containers[0]#$PREFIX-} (h1) -> ${containers[2]#$PREFIX-} (h2), frontend, 3 s"
  ip netns exec "${containers[2]}" iperf3 -s -1 -p 5201 --logfile "$RUN/iperf3-server.log" -D
  # The daemonized server may not listen yet: a refused connect leaves it waiting, so retry.
  local measured=""
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.3
    if ip netns exec "${containers[0]}" iperf3 -c "${ips[2]}" -p 5201 -t 3 -f g >"$RUN/iperf3.log" 2>&1 \
      && grep -q "receiver" "$RUN/iperf3.log"; then
      measured=1
      grep -E "receiver" "$RUN/iperf3.log" | awk '{print "throughput: " $(NF-2) " " $(NF-1)}'
      break
    fi
  done
  [ -n "$measured" ] || echo "iperf3 failed (see $RUN/iperf3.log)"

  echo; echo "== vxnet stats (h1)"; vx 1 stats | grep -vE ' 0$' || true

  cat <<EOF

The agents keep running. Play with it:
  ip netns exec ${containers[0]} ping ${ips[4]}          # frontend h1 -> frontend h3
  $VXNET -H $RUN/h1.sock network ls
  $VXNET -H $RUN/h2.sock fdb show
  logs: $RUN/h*.log      remove everything: deploy/demo.sh down

EOF
  echo "members: $(members_of 1)"
  if [ "$failures" = 0 ]; then
    echo "matrix: ok"
  else
    echo "matrix: FAILED ($failures unexpected results, marked with !)"
    exit 1
  fi
}

case "${1:-up}" in
  up) up ;;
  down) down; echo "demo: removed" ;;
  *) die "usage: $0 up|down" ;;
esac
