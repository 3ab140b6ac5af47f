#!/usr/bin/env python3
"""Memory per idle keep-alive connection of a running ringwork-files: opens connections in
steps (2,000, 6,000, 10,000), each making one GET of /small.bin (4,096 bytes, which the
served root must hold) and then staying open and idle, and prints the server's VmRSS and
RssAnon (KiB) after each step has settled 3 s. The slope between steps is the cost of one
more idle connection; the first step also pays for pools touched once (head buffers).

With CAFILE, the connections are TLS (to `localhost`, trusting CAFILE): each completes its
handshake and its GET, then stays open and idle.

Usage: bench/idle-rss.py PORT SERVER_PID [CAFILE]   (loopback; source addresses 127.0.x.y so
that ephemeral ports do not run out; needs RLIMIT_NOFILE's hard limit of 10,000 or more)
"""
import re
import resource
import socket
import ssl
import sys
import time

resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
port, pid = int(sys.argv[1]), int(sys.argv[2])
tls = None
if len(sys.argv) > 3:
    tls = ssl.create_default_context(cafile=sys.argv[3])


def rss():
    s = open(f"/proc/{pid}/status").read()
    return tuple(int(re.search(k + r":\s+(\d+)", s).group(1)) for k in ("VmRSS", "RssAnon"))


socks = []
req = b"GET /small.bin HTTP/1.1\r\nHost: x\r\n\r\n"
print("conns VmRSS_KiB RssAnon_KiB")
print(0, *rss(), flush=True)
for target in (2000, 6000, 10000):
    while len(socks) < target:
        i = len(socks)
        s = socket.socket()
        s.bind((f"127.0.{1 + i // 60000}.{1 + (i // 250) % 250}", 0))
        s.connect(("127.0.0.1", port))
        if tls:
            s = tls.wrap_socket(s, server_hostname="localhost")
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + 4096:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(f"connection {i} closed before its answer")
            got += chunk
        socks.append(s)
    time.sleep(3)
    print(target, *rss(), flush=True)
