"""Expert-cache misses per decode token, over HTTP, per served setting and concurrency.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/offload-misses.py [--problems 200] [--slots 2] [--port 31500]

Starts `lynx-sglang serve` (the embedded model) once per arm, one at a time: no cache (the reference
outputs and time), then `--lynx-expert-cache SLOTS` with LRU, with the activation-aware replacement,
with LRU and prefetch, with LRU under the `lynx` policy, and with each replacement policy under the
cache-aware `lynx` (`prefer_resident=true`; `--lynx-param` arms: the calibrated alpha 0.5). Each arm answers the same distinct held-out problems at
concurrency 1 and 8 after a stats reset, and prints one JSON line: accuracy, whether the greedy
answers equal the no-cache arm's, wall time, and from /lynx/stats the decode tokens, the misses per
decode token (summed over MoE layers) and the bytes copied per decode token.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
import urllib.request
from pathlib import Path

from lynx_sglang.embedded.task import heldout_problems, score
from lynx_sglang.evaluate import complete
from lynx_sglang.local_server import stop_process, wait_healthy

TOKEN = "offload-misses"


def arms(slots: int) -> list[tuple[str, list[str]]]:
    cache = ["--lynx-expert-cache", str(slots)]
    baseline = ["--lynx-policy", "baseline"]
    aware = ["--lynx-policy", "lynx", "--lynx-param", "alpha=0.5", "--lynx-param", "prefer_resident=true"]
    return [("no cache", baseline), ("lru", baseline + cache),
            ("activation", baseline + cache + ["--lynx-cache-policy", "activation"]),
            ("lru + prefetch", baseline + cache + ["--lynx-cache-prefetch"]),
            ("lru + lynx policy", cache + ["--lynx-policy", "lynx"]),
            ("lru + cache-aware lynx", cache + aware),
            ("activation + cache-aware lynx", cache + ["--lynx-cache-policy", "activation"] + aware),
            ("lru + prefetch + cache-aware lynx", cache + ["--lynx-cache-prefetch"] + aware)]


def request(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    with urllib.request.urlopen(urllib.request.Request(url + path, data=data, headers=headers), timeout=60) as r:
        return json.loads(r.read())


def measure(name: str, serve_args: list[str], problems, port: int, log_dir: Path, reference: dict) -> None:
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lynx_sglang.cli", "serve", "--port", str(port), "--lynx-admin-token", TOKEN,
               *serve_args]  # fmt: skip
    log = open(log_dir / f"{name.replace(' ', '_')}.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        if not wait_healthy(url, process, 300):
            raise SystemExit(f"{name}: server not healthy (log in {log_dir})")
        for concurrency in (1, 8):
            request(url, "/lynx/stats/reset", {})
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                answers = list(pool.map(lambda problem: complete(url, problem.prompt), problems))
            wall = time.perf_counter() - start
            reference.setdefault(concurrency, answers)
            cache = request(url, "/lynx/stats").get("expert_cache")
            layers = cache["layers"] if cache else []
            tokens = layers[0]["decode_tokens"] if layers else 0
            print(json.dumps({
                "arm": name, "concurrency": concurrency, "accuracy": score(problems, answers).accuracy,
                "same_answers_as_no_cache": answers == reference[concurrency],
                "wall_s": round(wall, 2), "decode_tokens": tokens,
                "misses_per_decode_token": round(sum(l["decode_misses"] for l in layers) / tokens, 4) if tokens else None,
                "bytes_copied_per_decode_token": round(cache["cache_bytes_copied_per_decode_token"]) if cache else None,
                "prefetch_accuracy": cache["prefetch_accuracy"] if cache else None,
            }), flush=True)  # fmt: skip
    finally:
        stop_process(process)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--port", type=int, default=31500)
    parser.add_argument("--arms", default=None, help="comma list of arm names to run (default: all)")
    args = parser.parse_args()
    problems = heldout_problems(args.problems, seed=77, distinct=True)
    reference: dict = {}
    with tempfile.TemporaryDirectory(prefix="offload-misses-") as log_dir:
        for name, serve_args in arms(args.slots):
            if args.arms and name not in args.arms.split(",") and name != "no cache":  # the reference always runs
                continue
            measure(name, serve_args, problems, args.port, Path(log_dir), reference)


if __name__ == "__main__":
    main()
