# Sourced by the admission benchmarks: starts the release webhook on the host (certificate files,
# namespace podsftp-bench-apps labelled for injection) and checks that $work/review.json, a
# realistic AdmissionReview, is injected. Sets: webhook (binary), work (temp dir, removed on
# exit), pid, port (HTTPS), metrics_port; needs tests/lib/env.sh and a KUBECONFIG. The caller's
# array webhook_args replaces the default extra arguments (--log-level=warn).
# shellcheck shell=bash
# The static build of images/build, else a plain `cargo build --release`.
webhook="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/podsftp-webhook"
[ -x "$webhook" ] || webhook="$CARGO_TARGET_DIR/release/podsftp-webhook"
[ -x "$webhook" ] || { echo "missing $webhook: cargo build --release -p podsftp-webhook" >&2; exit 1; }

work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  kubectl delete namespace podsftp-bench-apps --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

certs/generate --service podsftp-bench --namespace podsftp-bench --ip 127.0.0.1 --out "$work/certs" >/dev/null
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Namespace
metadata:
  name: podsftp-bench-apps
  labels:
    podsftp.io/injection: enabled
YAML

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"; metrics_port="$(free_port)"
"$webhook" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
  --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" --namespace podsftp-bench \
  "${webhook_args[@]:---log-level=warn}" >"$work/webhook.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$metrics_port/readyz" >/dev/null && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$metrics_port/readyz" >/dev/null || { cat "$work/webhook.log" >&2; exit 1; }

# A bare pod (no owner lookups) with two containers, volumes and a securityContext.
cat >"$work/review.json" <<'JSON'
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
 "uid":"0c7a3f9e-5b1d-4e8a-9a57-2d1f6c3b8e01","kind":{"group":"","version":"v1","kind":"Pod"},
 "resource":{"group":"","version":"v1","resource":"pods"},"namespace":"podsftp-bench-apps","operation":"CREATE",
 "userInfo":{"username":"bench"},"object":{"apiVersion":"v1","kind":"Pod",
  "metadata":{"name":"web","namespace":"podsftp-bench-apps","labels":{"app":"web"},"annotations":{"podsftp.io/root":"/srv"}},
  "spec":{"securityContext":{"runAsUser":1000,"runAsGroup":1000,"fsGroup":1000},
   "containers":[{"name":"app","image":"nginx:1.27","ports":[{"containerPort":8080}],"env":[{"name":"MODE","value":"prod"}],
     "volumeMounts":[{"name":"data","mountPath":"/srv"}]},
    {"name":"logs","image":"fluent-bit:3","volumeMounts":[{"name":"data","mountPath":"/srv","readOnly":true}]}],
   "volumes":[{"name":"data","emptyDir":{}}]}}}}
JSON
curl -fs --cacert "$work/certs/ca.crt" -H 'content-type: application/json' --data-binary @"$work/review.json" \
  "https://127.0.0.1:$port/mutate" | jq -e '.response.patchType == "JSONPatch"' >/dev/null \
  || { echo "the review is not injected; webhook log:" >&2; cat "$work/webhook.log" >&2; exit 1; }

# Peak resident memory of the webhook so far (VmHWM), in MiB.
rss_mib() { awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
