# shellcheck shell=bash
# The cluster's PKI and kubeconfigs, generated with openssl into $PKI. Sourced by tests/cluster/up.
# One CA signs every certificate (serving and client); certificates live 10 years because the state
# dir is thrown away by `down`. Keys are P-256 (fast to make), the service-account key is RSA.

# issue NAME SUBJECT EXTENDED_KEY_USAGE [SUBJECT_ALT_NAMES]
issue() {
  local name="$1" subject="$2" usage="$3" sans="${4:-}"
  [ -s "$PKI/$name.crt" ] && return
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig for the client certificate CERT_NAME.
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: podsftp
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: podsftp
  context: {cluster: podsftp, user: $2, namespace: default}
current-context: podsftp
EOF
}

generate_pki() {
  local node_ip="$1"
  mkdir -p "$PKI"
  if [ ! -s "$PKI/ca.crt" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=podsftp-cluster-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$PKI/ca.crt"
  fi
  [ -s "$PKI/sa.key" ] || { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null \
    && openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"; }
  issue kube-apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:$SERVICE_FIRST_IP,IP:$node_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue kube-apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  issue admin "/O=system:masters/CN=podsftp-admin" clientAuth
  issue kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue kube-scheduler "/CN=system:kube-scheduler" clientAuth
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$node_ip,IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost"
  issue kube-proxy "/CN=system:kube-proxy" clientAuth
  chmod 600 "$PKI"/*.key
  write_kubeconfig "$ADMIN_KUBECONFIG" admin
  local name
  for name in kube-controller-manager kube-scheduler kubelet kube-proxy; do
    write_kubeconfig "$PKI/$name.kubeconfig" "$name"
  done
}
