"""Load test of the app: N concurrent /generate clients (gradio_client, one session each) against a served app; every
client must get its streamed previews and its final image, none may error.

    python -m tests.tiny_model runs/tiny-model                      # a tiny random-weight model
    python benchmarks/load_test.py --model runs/tiny-model          # starts `python app.py` itself, then tests it
    python benchmarks/load_test.py --url http://127.0.0.1:7860/     # or an app that is already running

Only local addresses are accepted. Prints one JSON object: startup seconds (when it started the app), clients,
successes, errors, wall time, latency percentiles, images per second. Exits 1 if any client failed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, port: int, max_queue: int, timeout: float) -> tuple[subprocess.Popen, float]:
    """`python app.py` serving `model` on 127.0.0.1:port; returns it and the seconds until it answered HTTP."""
    import httpx

    start = time.perf_counter()
    app = subprocess.Popen(
        [sys.executable, "app.py", "--model", model, "--port", str(port), "--host", "127.0.0.1",
         "--max-queue", str(max_queue)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    while time.perf_counter() - start < timeout:
        if app.poll() is not None:
            sys.exit(f"app.py exited with {app.returncode}: {app.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return app, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    app.kill()
    sys.exit(f"app.py did not serve within {timeout:.0f} s")


def one_client(url: str, index: int, prompt: str, timeout: float, results: list) -> None:
    from gradio_client import Client

    start = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        job = client.submit(prompt, seed=index, randomize_seed=False, api_name="/generate")
        gallery, image, status, seed = job.result(timeout=timeout)
        updates = len(job.outputs())
        if not image or not Path(image).is_file() or seed != index:
            raise RuntimeError(f"no image in the last update: {status!r}")
        results[index] = {"ok": True, "seconds": time.perf_counter() - start, "updates": updates}
    except Exception as e:  # every failure is counted and reported, none stops the others
        results[index] = {"ok": False, "seconds": time.perf_counter() - start, "error": f"{type(e).__name__}: {e}"}


def run(url: str, clients: int, prompt: str, timeout: float) -> dict:
    results: list[dict | None] = [None] * clients
    threads = [threading.Thread(target=one_client, args=(url, i, prompt, timeout, results)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    wall = time.perf_counter() - start
    done = [r for r in results if r and r["ok"]]
    seconds = sorted(r["seconds"] for r in done)
    return {
        "clients": clients,
        "succeeded": len(done),
        "errors": [r["error"] for r in results if r and not r["ok"]] + ["no answer"] * results.count(None),
        "updates_per_client": sorted({r["updates"] for r in done}),
        "wall_seconds": round(wall, 2),
        "latency_seconds": {
            "p50": round(statistics.median(seconds), 2) if seconds else None,
            "p95": round(seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))], 2) if seconds else None,
            "max": round(seconds[-1], 2) if seconds else None,
        },
        "images_per_second": round(len(done) / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running app, on this machine")
    where.add_argument("--model", help="start `python app.py --model MODEL` on a free local port and test it")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--prompt", default="a red cube on a wooden table")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per client, and for the start-up")
    args = parser.parse_args()

    report, app = {}, None
    if args.model:
        port = free_port()
        app, report["startup_seconds"] = start_app(args.model, port, max(32, args.clients), args.timeout)
        url = f"http://127.0.0.1:{port}/"
    else:
        url = args.url
        if urlparse(url).hostname not in LOCAL_HOSTS:
            sys.exit(f"{url}: only apps on this machine are load-tested ({', '.join(sorted(LOCAL_HOSTS))})")
    try:
        report.update(run(url, args.clients, args.prompt, args.timeout))
    finally:
        if app is not None:
            app.terminate()
            app.wait(30)
    report["torch_threads_env"] = os.environ.get("OMP_NUM_THREADS", "default")
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["succeeded"] == args.clients else 1)


if __name__ == "__main__":
    main()
