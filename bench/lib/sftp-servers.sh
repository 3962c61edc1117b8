# shellcheck shell=bash
# Sourced by the SFTP benchmarks (bench/sftp, bench/profile): podsftp-sidecar ($BIN), bssh-server
# 3.1.0 (Rust: russh + russh-sftp in one process; installed on first use into
# $PODSFTP_CACHE/tools) and OpenSSH's sshd with the external sftp-server, on loopback with key
# login, each serving $WORK/served. Needs tests/lib/env.sh, BIN and PY. Sets WORK (on tmpfs,
# removed on exit; fill served/ and local/ before the transfers), BSSH_VERSION, PID and PORT by
# server name; start_servers starts the named servers, sftp_run and round_trip are the clients.

# bssh 3.1.0 declares rust-version 1.97; it builds with the installed toolchain regardless.
BSSH_VERSION=3.1.0
BSSH="$PODSFTP_CACHE/tools/bin/bssh-server"
flock /tmp/bssh-install.lock bash -c "'$BSSH' version 2>/dev/null | grep -q '$BSSH_VERSION' || {
  echo 'installing bssh-server $BSSH_VERSION (once)...' >&2
  CARGO_TARGET_DIR='$PODSFTP_CACHE/bssh-build' nice -n 10 cargo install --locked bssh --version $BSSH_VERSION \
    --bin bssh-server --ignore-rust-version --root '$PODSFTP_CACHE/tools' >&2
  rm -rf '$PODSFTP_CACHE/bssh-build'
}"

WORK="$(mktemp -d /dev/shm/podsftp-bench.XXXXXX)"
mkdir -p "$WORK"/{served,local,creds,sshd,bssh}
declare -A PID PORT
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Client key, host key and podsftp's credentials directory, shared by all servers.
ssh-keygen -q -t ed25519 -N "" -f "$WORK/client_key"
ssh-keygen -q -t ed25519 -N "" -f "$WORK/creds/ssh_host_ed25519_key"
cp "$WORK/client_key.pub" "$WORK/creds/authorized_keys"
whoami > "$WORK/creds/username"
head -c 18 /dev/urandom | base64 > "$WORK/creds/password"

start_podsftp() {
  PORT[podsftp]="$(free_port)"
  "$BIN" serve --listen "127.0.0.1:${PORT[podsftp]}" --credentials "$WORK/creds" --dir "$WORK/served" \
    2> "$WORK/podsftp.log" &
  PID[podsftp]=$!
}

# SFTP only, rooted at the served directory (relative names resolve there, as for the others),
# the window the issue measured it with; enough sessions for bench/sftp's 20 clients.
start_bssh() {
  PORT[bssh]="$(free_port)"
  cp "$WORK/client_key.pub" "$WORK/bssh/authorized_keys"
  cat > "$WORK/bssh/config.yaml" <<CONF
server:
  bind_address: 127.0.0.1
  port: ${PORT[bssh]}
  host_keys: [$WORK/creds/ssh_host_ed25519_key]
  window_size: 8388608
auth:
  methods: [publickey]
  publickey:
    authorized_keys_pattern: $WORK/bssh/authorized_keys
sftp:
  enabled: true
  root: $WORK/served
scp:
  enabled: false
security:
  max_sessions_per_user: 100
CONF
  "$BSSH" -c "$WORK/bssh/config.yaml" -D run 2> "$WORK/bssh/log" &
  PID[bssh]=$!
}

# sshd with its own config on its own port; the external sftp-server (a process per session, like
# podsftp's worker), not internal-sftp.
start_openssh() {
  PORT[openssh]="$(free_port)"
  cp "$WORK/client_key.pub" "$WORK/sshd/authorized_keys"
  cat > "$WORK/sshd/sshd_config" <<CONF
Port ${PORT[openssh]}
ListenAddress 127.0.0.1
HostKey $WORK/creds/ssh_host_ed25519_key
PidFile $WORK/sshd/pid
AuthorizedKeysFile $WORK/sshd/authorized_keys
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp /usr/lib/openssh/sftp-server -d $WORK/served
CONF
  mkdir -p /run/sshd
  /usr/sbin/sshd -D -f "$WORK/sshd/sshd_config" -E "$WORK/sshd/log" &
  PID[openssh]=$!
}

start_servers() { # podsftp|bssh|openssh...
  local server port
  for server in "$@"; do "start_$server"; done
  for server in "$@"; do
    port=${PORT[$server]}
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  done
}

sftp_run() { # port cipher batch-file [client-address]
  sftp -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes \
    -o IdentitiesOnly=yes -o BindAddress="${4:-127.0.0.1}" -i "$WORK/client_key" -c "$2" -P "$1" -b "$3" \
    "$(whoami)@127.0.0.1" > /dev/null
}

# Microseconds per request round trip: a raw SFTP client (Python, through `ssh -s sftp`, so no
# client-side SFTP logic is in the way) sends sequential 4 KiB READs of served/big.bin, or
# sequential 4 KiB WRITEs to a new file; 2,000 unless told.
round_trip() { # read|write port [requests]
  $PY - "$1" "$2" "$WORK/client_key" "$(whoami)" "${3:-2000}" <<'PYEOF'
import os, struct, subprocess, sys, time
op, port, key, user, n = sys.argv[1:6]
ssh = subprocess.Popen(["ssh", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", key, "-c", "aes256-gcm@openssh.com",
    "-p", port, "-s", f"{user}@127.0.0.1", "sftp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
def send(kind, body):
    ssh.stdin.write(struct.pack(">IB", len(body) + 1, kind) + body)
def receive():
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = ssh.stdout.read(n - len(data)); assert chunk, "server closed"; data += chunk
        return data
    (n,) = struct.unpack(">I", exactly(4)); return exactly(n)
string = lambda b: struct.pack(">I", len(b)) + b
send(1, struct.pack(">I", 3)); receive()
# OPEN: READ for big.bin; WRITE|CREAT|TRUNC for rtt.bin
name, pflags = (b"big.bin", 0x01) if op == "read" else (b"rtt.bin", 0x1a)
send(3, struct.pack(">I", 1) + string(name) + struct.pack(">II", pflags, 0))
reply = receive(); assert reply[0] == 102, reply
handle = reply[9:]
n, block = int(n), os.urandom(4096)
start = time.perf_counter()
for i in range(n):
    where = string(handle) + struct.pack(">Q", i * 4096)
    if op == "read":
        send(5, struct.pack(">I", i + 2) + where + struct.pack(">I", 4096)); reply = receive(); assert reply[0] == 103, reply
    else:
        send(6, struct.pack(">I", i + 2) + where + string(block)); reply = receive(); assert reply[5:9] == b"\0\0\0\0", reply
print(f"{(time.perf_counter() - start) / n * 1e6:.0f}")
ssh.stdin.close(); ssh.wait()
PYEOF
}
