"""paramiko against podsftp-sidecar: prefetch download of a big file, and many small files
uploaded in parallel over one SFTP session. Prints "OK" on success; raises otherwise."""
import hashlib
import os
import sys
import threading

import paramiko

host, port, user, password, remote_dir, local_dir = sys.argv[1:7]
port = int(port)

transport = paramiko.Transport((host, port))
transport.connect(username=user, password=password)
sftp = paramiko.SFTPClient.from_transport(transport)

def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

# 1. Prefetch: paramiko pipelines hundreds of READ requests at once.
with sftp.open("big.bin", "rb") as f:
    f.prefetch()
    data = f.read()
expected = sha(os.path.join(local_dir, "big.bin"))
assert hashlib.sha256(data).hexdigest() == expected, "prefetched bytes differ"

# 2. The same file through getfo (also prefetching) into a local file.
out = os.path.join(local_dir, "big.back")
sftp.get("big.bin", out)
assert sha(out) == expected, "sftp.get bytes differ"

# 3. Many small files uploaded in parallel: 8 SFTP sessions on the one connection. (One
# SFTPClient shared by threads with pipelined writes hangs paramiko against OpenSSH as well.)
errors = []
def upload(worker):
    try:
        client = paramiko.SFTPClient.from_transport(transport)
        for i in range(worker, 200, 8):
            payload = (f"file {i} ".encode() * (i + 1))[: 4096 + i]
            with client.open(f"small/{i}.txt", "wb") as f:
                f.set_pipelined(True)
                f.write(payload)
        client.close()
    except Exception as e:  # noqa: BLE001 - reported below
        errors.append(repr(e))

sftp.mkdir("small")
threads = [threading.Thread(target=upload, args=(w,)) for w in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join(120)
assert not errors, errors
assert not any(t.is_alive() for t in threads), "upload threads hung"
assert len(sftp.listdir("small")) == 200
sftp.close()
transport.close()
print("OK")
