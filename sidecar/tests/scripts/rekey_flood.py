"""Re-keys an SSH connection before logging in, as often as the server allows (at most COUNT
times). Prints "rekeys N" with the number of completed key exchanges. Usage: rekey_flood.py HOST
PORT COUNT"""
import socket
import sys

import paramiko

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
transport = paramiko.Transport(socket.create_connection((host, port), timeout=10))
transport.start_client(timeout=10)
done = 0
try:
    for _ in range(count):
        transport.renegotiate_keys()
        done += 1
except (paramiko.SSHException, EOFError, OSError):
    pass
print(f"rekeys {done}", flush=True)
