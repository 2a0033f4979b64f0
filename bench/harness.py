"""What the side-by-side benchmarks share: requests, process trees and their CPU time and
memory from /proc, and wrk runs with a POST body from a file."""
import os
import re
import subprocess
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")


def request(url, body=None, ctype=None):
    try:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype} if ctype else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except Exception:
        return None, ""


def tree(pid):
    """The pid and its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+)", f.read())
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(work, url, body, ctype, connections, root_pid, seconds):
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write(f'local f = assert(io.open("{os.path.join(work, body)}", "rb")); wrk.method = "POST"; wrk.body = f:read("*a"); f:close()\n')
        f.write(f'wrk.headers["Content-Type"] = "{ctype}"\n')
    pids = tree(root_pid)
    cpu0 = cpu_seconds(pids)
    out = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", script, url],
        capture_output=True, text=True, check=True,
    ).stdout
    cpu = cpu_seconds(pids) - cpu0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    took = to_ms(re.search(r"requests in ([\d.]+(?:us|ms|s))", out).group(1)) / 1000
    pct = {p: to_ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    non2xx = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    good = max(total - non2xx, 0)
    return {
        "rps": good / took,
        "p50": pct.get("50"), "p99": pct.get("99"),
        "errors": non2xx + socket,
        "cpu_per_1k": cpu * 1000 / max(good, 1),
    }
