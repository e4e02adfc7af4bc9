"""`make bench`: a real `assistant serve` under 16 concurrent /ask clients, beside the floor.

The floor is how many bare query encodes per second one process runs with the torch model
(measured first, in this process, on the same questions). Then `assistant serve` is started as
a person would start it (a subprocess, default settings unless --workers/--threads/--encoder
say otherwise), timed until /health answers, and loaded by CONCURRENCY clients on keep-alive
connections to 127.0.0.1 only, each sending its next question as soon as the last is answered,
until REQUESTS answers or MAX_SECONDS. Printed: requests/s (and its ratio to the floor), p50,
p99, errors, resident memory per process. Timings are printed, never asserted.

    python tests/bench_load.py                         # default settings
    python tests/bench_load.py --matrix                # several workers x threads settings
    python tests/bench_load.py --workers 2 --threads 1 --encoder onnx
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bench import pct, question_pool  # noqa: E402

HOST = "127.0.0.1"  # loopback only
CONCURRENCY = 16
REQUESTS = 2000
WARMUP = 64
MAX_SECONDS = 60.0


def torch_encodes_per_second(questions: list[str], seconds: float = 8.0) -> tuple[float, float, float]:
    """Bare query encodes per second with the torch model, one process, one after the other
    (and the p50 of one encode and the CPU time per encode, ms). Run in a child process so this
    one never holds torch."""
    code = (
        "import json, sys, time, statistics\n"
        "from assistant.embedder import get_embedder\n"
        "qs = json.loads(sys.stdin.read()); e = get_embedder('torch')\n"
        "for q in qs[:20]: e.encode_query(q)\n"
        "n, ts, t0, c0 = 0, [], time.perf_counter(), time.process_time()\n"
        f"while time.perf_counter() - t0 < {seconds}:\n"
        "    t = time.perf_counter(); e.encode_query(qs[n % len(qs)]); ts.append(time.perf_counter() - t); n += 1\n"
        "print(json.dumps([n / (time.perf_counter() - t0), statistics.median(ts) * 1000, (time.process_time() - c0) * 1000 / n]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(questions), capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    rate, p50, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return rate, p50, cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (a figure the machine's load skews less)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def _request(reader, writer, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def load(port: int, bodies: list[bytes], concurrency: int, total: int, max_seconds: float) -> dict:
    """`concurrency` clients on keep-alive connections; returns latencies (ms) and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def client(k: int) -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while sent < total and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                t = time.perf_counter()
                try:
                    status, _ = await _request(reader, writer, body)
                except (OSError, asyncio.IncompleteReadError) as e:
                    errors.append(repr(e))
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                if status != 200:
                    errors.append(f"HTTP {status}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {"seconds": time.perf_counter() - t0, "latencies": latencies, "errors": errors}


def start_server(port: int, workers: int | None, threads: int | None, encoder: str | None) -> tuple[subprocess.Popen, float]:
    """`assistant serve` in a subprocess; returns it and the seconds until /health said ok."""
    import httpx

    cmd = [sys.executable, "-m", "assistant", "serve", "--host", HOST, "--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if encoder:
        env["ASSISTANT_ENCODER"] = encoder
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    while time.perf_counter() - t0 < 120:
        if proc.poll() is not None:
            raise RuntimeError(f"assistant serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            r = httpx.get(f"http://{HOST}:{port}/health", timeout=1.0)
            if r.status_code == 200 and r.json().get("index_loaded"):
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    stop_server(proc)
    raise RuntimeError("assistant serve did not answer /health within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its workers only
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_one(bodies: list[bytes], workers: int | None, threads: int | None, encoder: str | None,
            total: int, concurrency: int) -> dict:
    port = free_port()
    proc, ready = start_server(port, workers, threads, encoder)
    try:
        asyncio.run(load(port, bodies, concurrency, WARMUP, MAX_SECONDS))  # every worker warm
        pids = [proc.pid, *children(proc.pid)]
        cpu0 = cpu_seconds(pids)
        r = asyncio.run(load(port, bodies, concurrency, total, MAX_SECONDS))
        cpu = cpu_seconds(pids) - cpu0
        rss = {pid: rss_mb(pid) for pid in pids}
    finally:
        stop_server(proc)
    lat = r["latencies"]
    return {
        "ready": ready, "rate": len(lat) / r["seconds"], "p50": statistics.median(lat), "p99": pct(lat, 99),
        "errors": len(r["errors"]), "cpu_ms": cpu * 1000 / max(1, len(lat)), "first_error": r["errors"][0] if r["errors"] else None, "n": len(lat), "rss": rss,
    }


def describe(label: str, r: dict, floor: float) -> str:
    rss = ", ".join(f"{mb:.0f}" for mb in r["rss"].values())
    return (f"  {label:<28} {r['rate']:6.1f} req/s ({r['rate'] / floor:4.2f}x floor)  p50 {r['p50']:6.1f} ms  "
            f"p99 {r['p99']:6.1f} ms (p99/p50 {r['p99'] / r['p50']:3.1f})  errors {r['errors']}/{r['n']}  "
            f"/health after {r['ready']:.1f}s  server CPU {r['cpu_ms']:.1f} ms/answer  RSS MB per process [{rss}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--encoder", choices=["onnx", "torch"])
    ap.add_argument("--matrix", action="store_true", help="try several workers x threads settings")
    ap.add_argument("--requests", type=int, default=REQUESTS)
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    pool = question_pool()
    bodies = [json.dumps({"question": q, "history": h[-20:], "top_k": 3}).encode() for q, h in pool]
    floor, enc50, enc_cpu = torch_encodes_per_second([q for q, _ in pool])
    print(f"assistant serve under load: {args.concurrency} concurrent clients on 127.0.0.1, "
          f"up to {args.requests} /ask (of {len(pool)} questions) or {MAX_SECONDS:.0f}s")
    print(f"  floor: bare torch query encodes, one process: {floor:.1f} /s (p50 {enc50:.1f} ms, CPU {enc_cpu:.1f} ms/encode)")
    if args.matrix:
        settings = [(1, 1, "onnx"), (1, 2, "onnx"), (2, 1, "onnx"), (2, 2, "onnx"), (1, None, "torch")]
    else:
        settings = [(args.workers, args.threads, args.encoder)]
    print(f"  (load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work on the machine skews all figures)")
    for workers, threads, encoder in settings:
        label = ("default settings" if workers is None and threads is None and encoder is None else
                 f"{encoder or 'default'} workers={workers or 'default'} threads={threads or 'default'}")
        r = run_one(bodies, workers, threads, encoder, args.requests, args.concurrency)
        after, _, _ = torch_encodes_per_second([q for q, _ in pool], seconds=4.0)  # the machine's load drifts
        floor = (floor + after) / 2
        print(describe(label, r, floor) + f"  [floor now {after:.1f}/s]", flush=True)
        if r["first_error"]:
            print(f"    first error: {r['first_error']}")


if __name__ == "__main__":
    main()
