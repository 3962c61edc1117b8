# shellcheck shell=bash
# The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, all on loopback
# (the apiserver also on the host's address when a node runs, so pods reach it). Sourced by `up`.

start_etcd() {
  mkdir -p "$CLUSTER_DIR/etcd"
  # --unsafe-no-fsync: the cluster is disposable, and fsync on a shared busy disk makes it crawl.
  start_component etcd "$BIN/etcd" --name podsftp --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "podsftp=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn
}

# start_apiserver BIND_ADDRESS NODE_IP
start_apiserver() {
  echo "$1" >"$RUN/kube-apiserver.bind"
  start_component kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address "$1" --secure-port "$APISERVER_PORT" --advertise-address "$2" \
    --tls-cert-file "$PKI/kube-apiserver.crt" --tls-private-key-file "$PKI/kube-apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --enable-aggregator-routing=true \
    --kubelet-client-certificate "$PKI/kube-apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/kube-apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --profiling=false --v 1
}

# Client rate limits of the controller-manager and the scheduler (their defaults, 20 and 50 requests/s,
# protect a shared production apiserver from one client). This cluster has one user, and tests and
# benchmarks wait on these two: a 1,030-pod storm took 63 s to get its pods from the controller-manager
# at 20/s. Above what the 2-core apiserver serves, so the apiserver's own priority and fairness does
# the limiting. Always on: e2e runs only get faster.
CONTROL_PLANE_CLIENT_LIMITS=(--kube-api-qps 500 --kube-api-burst 1000)

start_controller_manager() {
  start_component kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$PKI/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
    --controllers '*' --use-service-account-credentials=true --enable-garbage-collector=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-name podsftp \
    "${CONTROL_PLANE_CLIENT_LIMITS[@]}" --leader-elect=false --profiling=false --v 1
}

start_scheduler() {
  start_component kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$PKI/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$PKI/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
    "${CONTROL_PLANE_CLIENT_LIMITS[@]}" --leader-elect=false --profiling=false --v 1
}

apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}
etcd_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
# secure_healthz PORT: the controller-manager's and scheduler's /healthz (allowed without credentials).
secure_healthz() { curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz" >/dev/null; }

control_plane_healthy() {
  local c
  for c in "${CONTROL_PLANE_COMPONENTS[@]}"; do component_alive "$c" || return 1; done
  apiserver_ready
}

# fail_with_log COMPONENT MESSAGE: the component's last log lines explain most failures.
fail_with_log() {
  say "$2; last lines of $LOGS/$1.log:"
  tail -n 25 "$LOGS/$1.log" >&2 || true
  exit 1
}

start_control_plane() {
  local bind="$1" node_ip="$2"
  start_etcd
  wait_for 60 etcd etcd_ready || fail_with_log etcd "etcd did not become healthy"
  start_apiserver "$bind" "$node_ip"
  wait_for 180 kube-apiserver apiserver_ready || fail_with_log kube-apiserver "kube-apiserver not ready"
  start_controller_manager
  start_scheduler
  wait_for 60 kube-controller-manager secure_healthz "$CONTROLLER_MANAGER_PORT" \
    || fail_with_log kube-controller-manager "kube-controller-manager not healthy"
  wait_for 60 kube-scheduler secure_healthz "$SCHEDULER_PORT" || fail_with_log kube-scheduler "kube-scheduler not healthy"
  wait_for 120 "ServiceAccount default/default" kubectl_admin get serviceaccount default -n default \
    || fail_with_log kube-controller-manager "the default ServiceAccount never appeared"
}
