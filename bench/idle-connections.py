#!/usr/bin/env python3
"""CPU, descriptors and memory of flowgated with 2,000 idle connections held on its healthz port,
against the same agent with none, measured in one run (issue 12, 3).

The agent runs in the network namespace this script is started in (bench/idle-connections.sh
makes a private one). Phase "none": the agent alone for WINDOW seconds. Phase "idle": 2,000 TCP
connections to healthz that never send a byte, each opened again as soon as the agent closes it (at
its header-read timeout), for WINDOW seconds. In each phase: the agent's CPU (utime + stime from
/proc/PID/stat), its open descriptors and RSS at the end, and the latency of 50 fresh healthz
requests made during the phase.
Usage: idle-connections.py FLOWGATED [CONNECTIONS] [WINDOW_SECONDS]
"""
import os, selectors, socket, subprocess, sys, tempfile, time

flowgated = sys.argv[1]
conns = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
window = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
port = 31256
tick = os.sysconf("SC_CLK_TCK")

d = tempfile.mkdtemp()
os.makedirs(f"{d}/m")
with open(f"{d}/m/cluster.yaml", "w") as f:
    f.write("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n")
agent = subprocess.Popen([flowgated, "--manifests", f"{d}/m", "--socket", f"{d}/api.sock", "--state-dir", f"{d}/state",
                          "--healthz-bind-address", f"127.0.0.1:{port}", "--metrics-bind-address", ""],
                         stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

def cpu():
    with open(f"/proc/{agent.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick

def fds():
    return len(os.listdir(f"/proc/{agent.pid}/fd"))

def rss_mib():
    with open(f"/proc/{agent.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def healthz():
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 200"), data
    return (time.monotonic() - t) * 1000

deadline = time.monotonic() + 10
while True:
    try:
        healthz()
        break
    except Exception:
        assert time.monotonic() < deadline, "flowgated did not come up"
        time.sleep(0.1)

def phase(name, hold):
    sel = selectors.DefaultSelector()
    def connect():
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ)
    if hold:
        for _ in range(conns):
            connect()
    time.sleep(1)
    start_cpu, start = cpu(), time.monotonic()
    lat, reopened, next_probe = [], 0, start
    while time.monotonic() - start < window:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            sel.unregister(s)
            s.close()
            reopened += 1
            connect()
        if time.monotonic() >= next_probe and len(lat) < 50:
            lat.append(healthz())
            next_probe += window / 50
    used = cpu() - start_cpu
    elapsed = time.monotonic() - start
    f, r = fds(), rss_mib()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    lat.sort()
    print(f"{name:>5}: agent CPU {100 * used / elapsed:5.2f}% of a core over {elapsed:.0f} s, "
          f"{f:5d} descriptors, RSS {r:6.1f} MiB, healthz p50 {lat[len(lat) // 2]:.2f} ms "
          f"p99 {lat[-1]:.2f} ms (n={len(lat)}), idle connections reopened {reopened}", flush=True)

try:
    phase("none", False)
    phase("idle", True)
    time.sleep(2)
    phase("none", False)
finally:
    agent.terminate()
    agent.wait()
