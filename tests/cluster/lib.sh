# shellcheck shell=bash
# Shared by tests/cluster/{up,down,selftest,import-image}: where a cluster's state lives, its ports, and
# how its processes are started, recognised and stopped. Sourced, never run.
#
# Every process the harness starts has the state directory in its command line (config files, data
# dirs, sockets); that is how `down` finds them even when the pid files are gone or stale. Container
# processes don't, so they are found through the cgroup the node's kubelet puts all pods under.

cluster_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$cluster_lib_dir/../lib/env.sh"
source "$cluster_lib_dir/versions"

CLUSTER_DIR="$(realpath -m "${PODSFTP_CLUSTER_DIR:-$PODSFTP_CACHE/cluster}")"
PORT_BASE="${PODSFTP_CLUSTER_PORT_BASE:-6440}"
APISERVER_PORT=$((PORT_BASE + 3))          # 6443 by default
ETCD_CLIENT_PORT=$((PORT_BASE + 4))
ETCD_PEER_PORT=$((PORT_BASE + 5))
CONTROLLER_MANAGER_PORT=$((PORT_BASE + 6))
SCHEDULER_PORT=$((PORT_BASE + 7))
SERVICE_CIDR=10.96.0.0/16
SERVICE_FIRST_IP=10.96.0.1
POD_CIDR=10.88.0.0/16
NODE_NAME=podsftp-node
# Names the node creates on the host; derived from the state dir so `down` only removes its own.
cluster_tag="$(printf '%s' "$CLUSTER_DIR" | sha256sum | cut -c1-6)"
BRIDGE_NAME="podsftp$cluster_tag"          # <= 15 chars (IFNAMSIZ)
CGROUP_ROOT="/podsftp-$cluster_tag"        # kubelet's cgroupRoot: every pod lives below it

PKI="$CLUSTER_DIR/pki"
RUN="$CLUSTER_DIR/run"
LOGS="$CLUSTER_DIR/logs"
NODE="$CLUSTER_DIR/node"
ADMIN_KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"
CONTAINERD_SOCKET="$NODE/containerd.sock"

CONTROL_PLANE_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)
NODE_COMPONENTS=(containerd kubelet kube-proxy)

# Serialises up/down on one state dir (two `up`s at once would tear each other down). The lock file
# sits beside the dir because `down` removes the dir. `up` calls `down` while holding it.
lock_cluster() {
  [ "${PODSFTP_CLUSTER_LOCKED:-}" = "$CLUSTER_DIR" ] && return 0
  mkdir -p "$(dirname "$CLUSTER_DIR")"
  exec 8>"$CLUSTER_DIR.lock"
  flock -n 8 || { say "waiting for another up/down on $CLUSTER_DIR"; flock 8; }
  export PODSFTP_CLUSTER_LOCKED="$CLUSTER_DIR"
}

say() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# The cache directory holding this version set's binaries (built by tests/cluster/build).
cluster_bin_dir() {
  printf '%s/cluster-bin/k8s-%s-etcd-%s-helm-%s' "$PODSFTP_CACHE" "$KUBERNETES_VERSION" "$ETCD_VERSION" "$HELM_VERSION"
}

# The host's primary IPv4 address (source of the default route); the node and the apiserver's
# advertised endpoint use it, so pods reach the apiserver through the `kubernetes` Service.
host_ip() {
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | sed -nE 's/.* src ([0-9.]+).*/\1/p' | head -1)"
  [ -n "$ip" ] || ip="$(ip -4 -o addr show scope global | awk '{sub("/.*","",$4); print $4; exit}')"
  printf '%s' "${ip:-127.0.0.1}"
}

cmdline_of() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline"; }

# True when the process recorded for NAME is alive and still one of ours.
component_alive() {
  local pid
  pid="$(cat "$RUN/$1.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && cmdline_of "$pid" | grep -qF -- "$CLUSTER_DIR/"
}

# start_component NAME COMMAND...: runs detached (own session, so the caller's Ctrl-C or process-group
# kill doesn't take the cluster down), output appended to logs/NAME.log.
start_component() {
  local name="$1"; shift
  mkdir -p "$RUN" "$LOGS"
  printf '\n==== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOGS/$name.log"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
  echo $! >"$RUN/$name.pid"
}

# Our own ancestors mention the state dir too when a caller passed it on a command line; never kill them.
ancestors() {
  local pid=$$
  while [ -n "$pid" ] && [ "$pid" != 0 ]; do
    echo "$pid"
    pid="$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null)"
  done
}

# Every live process whose command line references the state dir (except us and our callers).
state_dir_processes() {
  local self; self=" $(ancestors | tr '\n' ' ') $BASHPID "
  local file pid
  # One grep over all command lines; it matches itself too, but is gone by the liveness check below.
  for file in $(grep -alF -- "$CLUSTER_DIR/" /proc/[0-9]*/cmdline 2>/dev/null); do
    pid="${file#/proc/}"; pid="${pid%/cmdline}"
    case "$self" in *" $pid "*) continue ;; esac
    [ -e "/proc/$pid" ] && echo "$pid"
  done
  return 0
}

# Every process in a cgroup below the node's cgroup root (pods' containers and sandboxes).
pod_cgroup_processes() {
  local d
  for d in /sys/fs/cgroup/*"$CGROUP_ROOT"; do
    [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
  return 0
}

# stop_processes WAIT_SECONDS PID...: TERM, then KILL whatever is left after the wait.
stop_processes() {
  local wait="$1"; shift
  [ $# -eq 0 ] && return 0
  kill -TERM "$@" 2>/dev/null || true
  local i pid left
  for ((i = 0; i < wait * 10; i++)); do
    left=()
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  sleep 0.2
}

stop_component() {
  local pid
  pid="$(cat "$RUN/$1.pid" 2>/dev/null)" || return 0
  component_alive "$1" && stop_processes "${2:-10}" "$pid"
  rm -f "$RUN/$1.pid"
}

# wait_for SECONDS WHAT COMMAND...: polls until COMMAND succeeds.
wait_for() {
  local seconds="$1" what="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
  say "$what: ready"
}

kubectl_admin() { "$(cluster_bin_dir)/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

ctr_node() { ctr --address "$CONTAINERD_SOCKET" -n k8s.io "$@"; }
