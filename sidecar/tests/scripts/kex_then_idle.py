"""Finishes the key exchange, never logs in, and answers the server's keepalives (paramiko's
transport thread does) for SECONDS; prints "open" if the server has not closed the connection by
then, else "closed AFTER" with the seconds it lasted. Usage: kex_then_idle.py HOST PORT SECONDS"""
import socket
import sys
import time

import paramiko

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
transport = paramiko.Transport(socket.create_connection((host, port), timeout=10))
started = time.monotonic()
transport.start_client(timeout=10)
while transport.is_active() and time.monotonic() - started < seconds:
    time.sleep(0.1)
print("open" if transport.is_active() else f"closed {time.monotonic() - started:.1f}", flush=True)
