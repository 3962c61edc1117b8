# shellcheck shell=bash
# The node part of tests/cluster/selftest (sourced by it; uses its `check`): a pod from an imported
# busybox image reaches Running, a ClusterIP and a NodePort Service answer from the host, `kubectl exec`
# works, and after `down` the host has no bridge, chain, cgroup, mount or changed ip_forward left.

SELFTEST_IMAGE=localhost/podsftp/cluster-selftest:1

selftest_image() {
  local rootfs archive="$CLUSTER_DIR/selftest-image.tar"
  rootfs="$(mktemp -d)"
  mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  local applet
  for applet in sh cat echo hostname httpd id ls sleep; do ln -s busybox "$rootfs/bin/$applet"; done
  echo "hello from the podsftp test node" >"$rootfs/www/index.html"
  "$here/../../images/oci-archive" --name "$SELFTEST_IMAGE" --rootfs "$rootfs" --output "$archive" \
    --entrypoint /bin/httpd --cmd -f --cmd -p --cmd 8080 --cmd -h --cmd /www
  rm -rf "$rootfs"
  echo "$archive"
}

selftest_workload() {
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: node-selftest}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: node-selftest, labels: {app: web}}
spec:
  containers:
  - name: web
    image: $SELFTEST_IMAGE
    imagePullPolicy: Never
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: node-selftest}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
}

pod_ready() { kubectl -n node-selftest wait pod/web --for=condition=Ready --timeout=120s >/dev/null; }
service_answers() { # service_answers HOST PORT
  local i
  for i in $(seq 1 30); do
    curl -fsS --max-time 2 "http://$1:$2/index.html" 2>/dev/null | grep -q "hello from the podsftp test node" && return 0
    sleep 1
  done
  return 1
}
exec_works() { [ "$(kubectl -n node-selftest exec web -- cat /www/index.html)" = "hello from the podsftp test node" ]; }
logs_work() { kubectl -n node-selftest logs web >/dev/null; }

host_clean() {
  local leftovers=()
  ip link show "$BRIDGE_NAME" >/dev/null 2>&1 && leftovers+=("bridge $BRIDGE_NAME")
  iptables-save 2>/dev/null | grep -qE '(KUBE-|CNI-)' && leftovers+=("iptables chains")
  ls -d /sys/fs/cgroup/*"$CGROUP_ROOT" >/dev/null 2>&1 && leftovers+=("cgroups $CGROUP_ROOT")
  grep -qF "$CLUSTER_DIR/" /proc/self/mountinfo && leftovers+=("mounts")
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$ip_forward_before" ] || leftovers+=("ip_forward")
  [ ${#leftovers[@]} -eq 0 ] || { say "left on the host: ${leftovers[*]}"; return 1; }
}

node_selftest() {
  local archive node_port cluster_ip start=$SECONDS
  local failed_before=$failures
  check "up adds the node to the running control plane" up_and_eval
  [ "$failures" = "$failed_before" ] || { say "no node: skipping the node checks"; return 0; }
  say "adding the node took $((SECONDS - start))s"
  check "node is Ready" kubectl wait node --all --for=condition=Ready --timeout=60s
  archive="$(selftest_image)"
  check "import-image imports a busybox image" "$here/import-image" "$archive"
  selftest_workload
  check "pod from the imported image is Running and ready" pod_ready
  cluster_ip="$(kubectl -n node-selftest get service web -o jsonpath='{.spec.clusterIP}')"
  node_port="$(kubectl -n node-selftest get service web -o jsonpath='{.spec.ports[0].nodePort}')"
  check "ClusterIP Service answers from the host ($cluster_ip:80)" service_answers "$cluster_ip" 80
  check "NodePort Service answers on the node address ($(host_ip):$node_port)" service_answers "$(host_ip)" "$node_port"
  check "NodePort Service answers on 127.0.0.1:$node_port" service_answers 127.0.0.1 "$node_port"
  check "kubectl exec works" exec_works
  check "kubectl logs works" logs_work
  say "node checks took $((SECONDS - start))s"

  say "killing every node and control plane process with SIGKILL, containers keep running"
  local victims
  mapfile -t victims < <(state_dir_processes)
  kill -KILL "${victims[@]}"
  sleep 1
  failed_before=$failures
  check "up after kill -9 with a node" up_and_eval
  [ "$failures" = "$failed_before" ] || { say "no node: skipping the node checks"; return 0; }
  check "node is Ready again" kubectl wait node --all --for=condition=Ready --timeout=60s
  check "no container of the killed run is left" test -z "$(pod_cgroup_processes)"
  archive="$(selftest_image)"   # the fresh node has only the images of \$PODSFTP_CACHE/images
  check "import-image after up after kill -9" "$here/import-image" "$archive"
  selftest_workload
  check "the pod runs again after up after kill -9" pod_ready

  check "down with a running pod" "$here/down"
  check "down left nothing on the host" host_clean
}
