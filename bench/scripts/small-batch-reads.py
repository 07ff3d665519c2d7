#!/usr/bin/env python3
"""Reads of a file written a few lines at a time: starts BIN_DIR/aggregator on a temporary
directory, posts N lines to one file in JSON batches of 20-50 lines, then downloads it five
times (checking every byte) and searches it once. Usage: small-batch-reads.py BIN_DIR N"""
import subprocess, sys, json, time, random, urllib.request, tempfile, re
bindir, nlines = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp()
p = subprocess.Popen([bindir + "/aggregator", "--listen", "127.0.0.1:0", "--data-dir", d + "/data"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
base = None
for line in p.stdout:
    m = re.search(r"listening on (http://\S+)", line)
    if m: base = m.group(1); break
rng = random.Random(1)
n = 0
expected = bytearray()
t0 = time.time()
while n < nlines:
    k = min(rng.randint(20, 50), nlines - n)
    batch = [{"uuid": f"u{i}", "host": "h", "file": "/f", "line-num": i, "content": f"line {i} " + "x" * 60} for i in range(n, n + k)]
    for b in batch: expected += (b["content"] + "\n").encode()
    body = json.dumps({"size": k, "batch": batch}).encode()
    req = urllib.request.Request(base + "/store/batch", data=body, headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    n += k
tw = time.time() - t0
def cpu():
    with open(f"/proc/{p.pid}/stat") as f: s = f.read().split(")")[1].split()
    return (int(s[11]) + int(s[12])) / 100
best = 1e9; c0 = cpu()
for _ in range(5):
    t = time.time(); data = urllib.request.urlopen(base + "/store/log?host=h&file=/f").read(); best = min(best, time.time() - t)
    assert data == expected, "download differs"
c1 = cpu()
t = time.time(); s = urllib.request.urlopen(base + "/store/search?q=line%20" + str(nlines - 7) + "%20&limit=10").read(); ts = time.time() - t
print(f"{bindir}: wrote {nlines} lines in {tw:.1f}s; download {len(expected)/best/1e6:.0f} MB/s best of 5, aggregator CPU {(c1-c0)/5*1000:.0f} ms per download; search {ts*1000:.0f} ms {len(s)} bytes")
p.terminate(); p.wait()
import shutil; shutil.rmtree(d, ignore_errors=True)
