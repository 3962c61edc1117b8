"""SFTP channels whose replies wait on a window the client never opens (paramiko grants window
only as the application reads). Usage: stuck_channels.py HOST PORT USER PASSWORD MODE, MODE:
  close-many  30 times: a channel, 100 pipelined 32 KiB READs of big.bin unread, CHANNEL_CLOSE
  eof-many    10 such channels ended with EOF only (still open), then an 11th channel
  drop        one such channel, then requests until the server stops taking them
Prints "done ..." when finished, then holds the connection until stdin closes (or the test
kills this process: a TCP drop)."""
import struct
import sys
import threading
import time

import paramiko

host, port, user, password, mode = sys.argv[1:6]
transport = paramiko.Transport((host, int(port)))
transport.connect(username=user, password=password)


def packet(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body


def string(b):
    return struct.pack(">I", len(b)) + b


def receive(chan):
    length = struct.unpack(">I", recv_exact(chan, 4))[0]
    return recv_exact(chan, length)


def recv_exact(chan, n):
    data = b""
    while len(data) < n:
        chunk = chan.recv(n - len(data))
        if not chunk:
            raise EOFError("channel closed")
        data += chunk
    return data


def stuck_channel():
    """A channel whose worker is blocked writing replies nobody reads."""
    chan = transport.open_session(window_size=32768, max_packet_size=32768)
    chan.invoke_subsystem("sftp")
    chan.sendall(packet(1, struct.pack(">I", 3)))
    assert receive(chan)[0] == 2, "no VERSION"
    chan.sendall(packet(3, struct.pack(">I", 1) + string(b"big.bin") + struct.pack(">II", 1, 0)))
    reply = receive(chan)
    assert reply[0] == 102, f"no HANDLE: {reply!r}"
    handle = reply[9:]
    for i in range(100):
        chan.sendall(packet(5, struct.pack(">I", 2 + i) + string(handle) + struct.pack(">QI", i * 32768, 32768)))
    return chan


if mode == "close-many":
    for _ in range(30):
        stuck_channel().close()
    print("done", flush=True)
elif mode == "eof-many":
    chans = [stuck_channel() for _ in range(10)]
    for chan in chans:
        chan.shutdown_write()
    try:
        transport.open_session(timeout=10)
        print("done eleventh-accepted", flush=True)
    except paramiko.ChannelException:
        print("done eleventh-refused", flush=True)
elif mode == "drop":
    chan = stuck_channel()
    stat = packet(17, struct.pack(">I", 1000) + string(b"big.bin"))

    def flood():
        while True:
            chan.sendall(stat * 64)

    # Sending blocks for good once the server stops reading (the socket buffers are full).
    threading.Thread(target=flood, daemon=True).start()
    time.sleep(3)
    print("done", flush=True)
else:
    sys.exit(f"unknown mode {mode}")
sys.stdin.read()
