"""Exact-match accuracy of a running server on the embedded task, measured over HTTP.

    lynx-sglang eval --url http://127.0.0.1:30000 --count 2000 [--distribution uniform]

Problems are distinct held-out problems unless `--no-distinct`; the report gives every task kind.
Requests go out concurrently (like real traffic) so the server forms decode batches; each is greedy
(temperature 0) so the result is reproducible.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lynx_sglang.embedded.task import DISTRIBUTIONS, Problem, Score, heldout_problems, score
from lynx_sglang.experiments.client import api_headers, error_reason
from lynx_sglang.local_server import server_url

MAX_ANSWER_TOKENS = 8  # the longest answer is 6 characters, plus EOS


def post_json(url: str, payload: dict, timeout: float = 120.0, api_key: str | None = None) -> dict:
    data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers=api_headers(api_key))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def error_detail(error: urllib.error.HTTPError) -> str:
    """The server's reason, else the status's phrase: "Bad Request" alone hid "chat_template is not set"."""
    reason = error_reason(error)
    return " ".join(reason.split())[:300] if reason else str(error.reason)


def complete(base_url: str, prompt: str, endpoint: str = "completions", api_key: str | None = None) -> str:
    if endpoint == "completions":
        body = {"model": "default", "prompt": prompt, "max_tokens": MAX_ANSWER_TOKENS, "temperature": 0}
        return post_json(f"{base_url}/v1/completions", body, api_key=api_key)["choices"][0]["text"]
    if endpoint == "chat":
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_ANSWER_TOKENS,
            "temperature": 0,
        }
        return post_json(f"{base_url}/v1/chat/completions", body, api_key=api_key)["choices"][0]["message"]["content"]
    raise ValueError(f"unknown endpoint {endpoint!r}; expected 'completions' or 'chat'")


@dataclass
class EvalResult:
    score: Score
    seconds: float
    endpoint: str

    def summary(self) -> str:
        return f"{self.score.summary()} via /v1/{self.endpoint} in {self.seconds:.1f} s"

    def as_json(self) -> dict:
        s = self.score
        by_kind = {k: {"correct": c, "total": n, "accuracy": s.kind_accuracy(k)} for k, (c, n) in s.by_kind.items()}
        return {"accuracy": s.accuracy, "correct": s.correct, "total": s.total, "by_kind": by_kind,
                "seconds": self.seconds, "endpoint": self.endpoint}


def evaluate(
    base_url: str, problems: list[Problem], *, endpoint: str = "completions", concurrency: int = 32,
    api_key: str | None = None,
) -> EvalResult:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        completions = list(pool.map(lambda p: complete(base_url, p.prompt, endpoint, api_key), problems))
    return EvalResult(score(problems, completions), time.monotonic() - started, endpoint)


def parse_args(argv=None):
    import argparse

    from lynx_sglang.arg_parser import OneLineParser

    ap = OneLineParser(prog="lynx-sglang eval", description=__doc__.split("\n")[0])
    ap.add_argument("--url", type=server_url, default="http://127.0.0.1:30000", help="base URL of a running server (default: %(default)s)")
    ap.add_argument("--api-key", help="the server's SGLang --api-key, if it has one")
    ap.add_argument("--count", type=int, default=2000, help="held-out problems to score, equal shares per kind (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1234, help="which held-out sample (default: %(default)s)")
    ap.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="digits",
        help="operands drawn digit count first (digits) or uniformly over their range (uniform) (default: %(default)s)",
    )
    ap.add_argument(
        "--distinct",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="no repeated problems (default); --no-distinct lets easy problems repeat as in training",
    )
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                    help="the OpenAI endpoint asked (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error(f"--count must be at least 1 (got {args.count})")
    if args.concurrency < 1:
        ap.error(f"--concurrency must be at least 1 (got {args.concurrency})")
    return ap, args


def describe(args, result: EvalResult) -> str:
    sample = "distinct" if args.distinct else "possibly repeated"
    header = (
        f"{result.score.total} {sample} held-out problems, {args.distribution} operands, seed {args.seed}, "
        f"via /v1/{result.endpoint} in {result.seconds:.1f} s"
    )
    return f"{header}\n{result.score.table()}"


def main(argv=None) -> int:
    ap, args = parse_args(argv)
    try:
        problems = heldout_problems(args.count, seed=args.seed, distinct=args.distinct, distribution=args.distribution)
    except ValueError as exc:  # more distinct problems asked for than the held-out partition holds
        ap.error(str(exc))
    try:
        result = evaluate(args.url, problems, endpoint=args.endpoint, concurrency=args.concurrency,
                          api_key=args.api_key)
    except urllib.error.HTTPError as exc:
        hint = "; pass the server's --api-key as --api-key" if exc.code == 401 else ""
        print(f"lynx-sglang eval: error: {args.url} answered HTTP {exc.code} ({error_detail(exc)}){hint}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, ConnectionError) as exc:
        print(f"lynx-sglang eval: error: cannot reach {args.url} ({exc})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result.as_json(), "distribution": args.distribution, "distinct": args.distinct,
                          "seed": args.seed}))
    else:
        print(describe(args, result))
    return 0
