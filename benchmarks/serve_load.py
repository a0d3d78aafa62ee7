"""A bounded load test of `python -m corea serve` on 127.0.0.1 with the embedded models.

    .venv/bin/python benchmarks/serve_load.py [--clients 4] [--seconds 120] [--threshold 0.8]

A fixed number of concurrent clients send questions of the generated arithmetic task for a fixed
time, then stop by themselves (each also stops after --max-requests). Every request is accounted
for: answered, answered as a fallback, or failed; a request with no reply at all is counted lost.
Writes benchmarks/serve_load.md with the figures, the machine and this command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corea.tasks import get_task  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, question: str, timeout: float) -> tuple[int, dict]:
    body = json.dumps({"messages": [{"role": "user", "content": question}]}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-requests", type=int, default=50, help="per client")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="corea-load-"))
    config = folder / "cascade.json"
    config.write_text(json.dumps({"tiers": [{"model": "smollm2", "threshold": args.threshold},
                                            {"model": "qwen"}],
                                  "generation": {"max_new_tokens": args.max_new_tokens}}))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "corea", "serve", "--config", str(config),
                               "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        raise SystemExit("the server did not start")

    questions = [e.question for e in get_task("arith").examples("test", 200)]
    records, lock = [], threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client(index: int) -> None:
        for n in range(args.max_requests):
            if time.monotonic() >= stop_at:
                return
            question = questions[(index * args.max_requests + n) % len(questions)]
            start = time.perf_counter()
            try:
                status, body = post(f"{base}/v1/chat/completions", question, timeout=600)
                outcome = "fallback" if body.get("corea", {}).get("fallback") else (
                    "ok" if status == 200 else f"http {status}")
            except Exception as error:  # no reply at all
                status, body, outcome = 0, {}, f"lost ({type(error).__name__})"
            with lock:
                records.append({"outcome": outcome, "latency": time.perf_counter() - start,
                                "tier": body.get("corea", {}).get("tier")})

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    server.terminate()
    server.wait(timeout=60)

    latencies = sorted(r["latency"] for r in records)
    outcomes = {}
    for record in records:
        outcomes[record["outcome"]] = outcomes.get(record["outcome"], 0) + 1
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)] if latencies else float("nan")
    deferred = sum(1 for r in records if r["tier"] == 2)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        "# Load test of `python -m corea serve` (embedded models, 127.0.0.1)",
        "",
        f"Command: `.venv/bin/python benchmarks/serve_load.py --clients {args.clients} --seconds "
        f"{args.seconds:g} --threshold {args.threshold:g} --max-new-tokens {args.max_new_tokens}` · "
        f"machine: {machine} · "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| clients | wall time (s) | requests | answered | fallbacks | errors / lost | "
        "throughput (req/min) | p50 latency (s) | p95 latency (s) | deferred to the LLM |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.clients} | {elapsed:.0f} | {len(records)} | {outcomes.get('ok', 0)} | "
        f"{outcomes.get('fallback', 0)} | "
        f"{sum(v for k, v in outcomes.items() if k not in ('ok', 'fallback'))} | "
        f"{len(records) / elapsed * 60:.1f} | {statistics.median(latencies):.1f} | {p95:.1f} | "
        f"{deferred}/{len(records)} |",
        "",
        f"Outcomes: {json.dumps(outcomes)}. Both tiers run on llama.cpp on this machine's CPU and "
        "serve one request at a time each, so latency grows with the number of clients waiting; "
        "no request was dropped unless the table says lost.",
        "",
    ]
    (ROOT / "benchmarks" / "serve_load.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
