"""Load on ``remamber serve`` (the shipped default model, on 127.0.0.1 only): throughput, latency
percentiles, errors and the server's memory at 1, 4 and 16 concurrent clients, with batching
(``--max-batch``, default 8) and without it (``--max-batch 1``) in the same run, so that the gain
of batching is a ratio measured on the same machine at the same time; then one overload run (16
clients against ``--max-queue 4``) to show that past the queue limit the only errors are 503s.
Writes benchmarks/results/serve_load.json.

    python benchmarks/serve_load.py                  # 1,050 requests per setting (+ warm-up), a few minutes
    python benchmarks/serve_load.py --scale 0.1      # a quick check of the script

Every level is bounded twice: a fixed request count and a time limit (``--level-limit-s``).
Each request is one image and one phrase (the examples of examples/examples.json in turn),
multipart, over a keep-alive connection per client; latency is the client's round trip.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from common import RESULTS, machine

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
# (clients, requests); the last level runs twice, so that RSS growth past warm-up would show (a leak)
LEVELS = ((1, 150), (4, 300), (16, 600), (16, 600))


def multipart(image: Path, text: str) -> tuple[bytes, str]:
    """A ready multipart body (image + text) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{image.name}"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image.read_bytes()
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{text}\r\n'.encode(),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class Server:
    """``remamber serve --port 0`` in a subprocess, on 127.0.0.1."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "remamber", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        deadline = time.monotonic() + 300
        line = ""
        while "http://" not in line:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"remamber serve did not start: {self.proc.stderr.read()}")
            line = self.proc.stdout.readline()
        self.port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path)
        body = json.loads(conn.getresponse().read())
        conn.close()
        return body

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def run_level(port: int, bodies: list[tuple[bytes, str]], clients: int, requests: int, limit_s: float) -> dict:
    """``requests`` requests from ``clients`` threads (each its own keep-alive connection), stopped
    early at ``limit_s`` seconds; latencies of the 200s and a count of every status."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    start = time.perf_counter()

    def client() -> None:
        nonlocal issued
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if issued >= requests or time.perf_counter() - start > limit_s:
                    break
                k = issued
                issued += 1
            body, ctype = bodies[k % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/segment", body=body, headers={"Content-Type": ctype})
                res = conn.getresponse()
                res.read()
                status = str(res.status)
            except (OSError, http.client.HTTPException) as e:
                status = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            took = time.perf_counter() - t0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(took)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ok = statuses.get("200", 0)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    return {
        "clients": clients,
        "requests": sum(statuses.values()),
        "ok": ok,
        "errors": sum(statuses.values()) - ok,
        "statuses": statuses,
        "stopped_by_time_limit": sum(statuses.values()) < requests,
        "seconds": round(seconds, 2),
        "throughput_rps": round(ok / seconds, 2),
        "latency_ms": {
            "p50": round(q[49] * 1000, 1),
            "p95": round(q[94] * 1000, 1),
            "p99": round(q[98] * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        },
    }


def run_setting(
    name: str, args: list[str], bodies: list, levels: list[tuple[int, int]], limit_s: float, warmup: int
) -> dict:
    """Start a server with ``args``, warm it up, run every level, and stop it."""
    server = Server(*args)
    try:
        run_level(server.port, bodies, 1, warmup, limit_s)
        rss_before = rss_mb(server.proc.pid)
        rows = []
        for clients, requests in levels:
            calls_before = server.get("/health")["forward_calls"]
            row = run_level(server.port, bodies, clients, requests, limit_s)
            calls = server.get("/health")["forward_calls"] - calls_before
            row["forward_calls"] = calls
            row["mean_batch"] = round(row["ok"] / calls, 2) if calls else None
            # RSS after each level: a first larger batch grows the allocator's pools once; a leak
            # would keep growing through the repeated last level.
            row["rss_mb_after"] = rss_mb(server.proc.pid)
            rows.append(row)
            print(
                f"{name:>10} clients {clients:>2}: {row['throughput_rps']:7.2f} req/s, p50 {row['latency_ms']['p50']} ms, "
                f"p99 {row['latency_ms']['p99']} ms, errors {row['errors']} {row['statuses']}, mean batch {row['mean_batch']}",
                flush=True,
            )
        rss_after = rss_mb(server.proc.pid)
    finally:
        server.stop()
    return {"server_args": args, "rss_mb": {"before": rss_before, "after": rss_after}, "levels": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-batch", type=int, default=8, help="the batched setting's --max-batch (default 8)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every request count (0.1: a quick check)")
    ap.add_argument("--level-limit-s", type=float, default=120.0, help="time limit of one level (default 120)")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = ap.parse_args()

    examples = json.loads((EXAMPLES / "examples.json").read_text())
    bodies = [multipart(EXAMPLES / e["image"], e["text"]) for e in examples]
    levels = [(c, max(c, round(n * args.scale))) for c, n in LEVELS]
    warmup = max(2, round(20 * args.scale))
    started = time.perf_counter()
    settings = {
        "batched": run_setting(
            "batched", ["--max-batch", str(args.max_batch)], bodies, levels, args.level_limit_s, warmup
        ),
        "unbatched": run_setting("unbatched", ["--max-batch", "1"], bodies, levels, args.level_limit_s, warmup),
    }
    overload = run_setting(
        "overload",
        ["--max-batch", str(args.max_batch), "--max-queue", "4"],
        bodies,
        [(16, max(16, round(300 * args.scale)))],
        args.level_limit_s,
        warmup,
    )
    gain = {}
    for b, u in zip(settings["batched"]["levels"], settings["unbatched"]["levels"]):
        key = str(b["clients"]) + (" (again)" if str(b["clients"]) in gain else "")
        gain[key] = round(b["throughput_rps"] / u["throughput_rps"], 2)
    over = overload["levels"][0]["statuses"]
    result = {
        "command": "python benchmarks/serve_load.py" + "".join(" " + a for a in sys.argv[1:]),
        "machine": machine(),
        "model": "remamber-tiny-shapes (shipped default)",
        "request": "one image (examples/shapes-*.png, 256x256) and one phrase, multipart, keep-alive",
        "clients": "threads of this script on the same machine as the server (they share its CPUs)",
        "settings": settings,
        "throughput_gain_batched_over_unbatched": gain,
        "overload": overload | {"only_503_past_the_queue": set(over) <= {"200", "503"}},
        "requests_total": sum(row["requests"] for s in (*settings.values(), overload) for row in s["levels"]),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    from remamber.utils.io import write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"gain of batching (throughput ratio by clients): {gain}; wrote {args.out}")


if __name__ == "__main__":
    main()
