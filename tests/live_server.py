"""Starting and stopping a real `lynx-sglang serve` for integration tests (one server per module)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lynx_sglang.local_server import free_port, is_healthy, log_tail, port_was_taken, stop_process, wait_healthy

STARTUP_TIMEOUT_S = 240
PORT_ATTEMPTS = 3


class RunningServer:
    """`lynx-sglang serve --port <free> ARGS`, or any other server command given as `command`
    (with `{port}` in it); `env` adds to the test environment."""

    def __init__(self, args: list[str], log_path: Path, *, command: list[str] | None = None, env=None):
        self.log_path = log_path
        if command is None:
            command = [sys.executable, "-m", "lynx_sglang.cli", "serve", "--port", "{port}", *args]
        test_env = dict(os.environ, OMP_NUM_THREADS="1")
        test_env.pop("TRITON_INTERPRET", None)  # set for the kernel tests; a server would run Triton interpreted
        self._command, self._env = command, {**test_env, **(env or {})}
        self._launch()

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([part.replace("{port}", str(self.port)) for part in self._command],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=self._env)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def wait_healthy(self) -> None:
        for attempt in range(PORT_ATTEMPTS):
            if wait_healthy(self.url, self.process, STARTUP_TIMEOUT_S, self.log_path):
                return
            # Another test's server (pytest-xdist runs two) may take the free port between the probe and
            # our launch: serve then stops (or hangs) saying so, and a new port is all it takes.
            if not port_was_taken(self.log_path) or attempt == PORT_ATTEMPTS - 1:
                break
            self.stop()
            self._launch()
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
        raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def healthy(self, within: float = 30.0) -> bool:
        """Healthy now or within `within` seconds: SGLang's /health runs a one-token generation, which
        a loaded machine (two test workers, a container build) may take past one probe's timeout."""
        deadline = time.monotonic() + within
        while not is_healthy(self.url):
            if time.monotonic() >= deadline or self.process.poll() is not None:
                return False
            time.sleep(1.0)
        return True

    @classmethod
    def healthy_one(cls, args: list[str], log_path: Path, **kwargs) -> "RunningServer":
        """A server started and healthy, or stopped again and the error raised (a fixture's start)."""
        server = cls(args, log_path, **kwargs)
        try:
            server.wait_healthy()
        except Exception:
            server.stop()
            raise
        return server

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        returncode = stop_process(self.process, sig, timeout)
        self._log.close()
        return returncode


def post(url: str, payload, timeout: float = 60, headers: dict | None = None):
    """POST JSON (or raw bytes); returns (status, parsed body or text)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body.decode(errors="replace")


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def generate_greedy(server: RunningServer, prompt_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations of token-id prompts from `/generate`, exactly `new_tokens` each."""
    body = {"input_ids": prompt_ids, "sampling_params": {"temperature": 0, "max_new_tokens": new_tokens,
                                                         "ignore_eos": True}}  # fmt: skip
    status, results = post(server.url + "/generate", body, timeout=300)
    assert status == 200, results
    return [r["output_ids"] for r in results]


def transformers_greedy(model_dir, prompt_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    """The same continuations from transformers in float32: no KV cache and no generate(), so the
    reference is obviously correct."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = torch.tensor([ids])
            for _ in range(new_tokens):
                next_id = model(seq).logits[0, -1].argmax()
                seq = torch.cat([seq, next_id.view(1, 1)], dim=1)
            outputs.append(seq[0, len(ids) :].tolist())
    return outputs


def admin_post(server: RunningServer, path: str, body, token: str):
    """POST to an admin route with the bearer token; the reply, asserted to be a 200."""
    status, reply = post(server.url + path, body, headers={"Authorization": f"Bearer {token}"})
    assert status == 200, reply
    return reply


def solve_heldout(server: RunningServer, count: int, seed: int, concurrency: int = 8) -> int:
    """How many of `count` held-out problems of the embedded task the server solves, sent at once."""
    from concurrent.futures import ThreadPoolExecutor

    from lynx_sglang.embedded.task import heldout_problems, normalise_completion
    from lynx_sglang.evaluate import complete

    problems = heldout_problems(count, seed=seed, distinct=True)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(lambda p: complete(server.url, p.prompt), problems))
    return sum(normalise_completion(a) == p.answer for a, p in zip(answers, problems))


# ---- the request fuzzing modules' probes --------------------------------------------------------

# A problem the embedded model answers "168": asked after a bad request, the server still serves.
KNOWN_PROBLEM = {"model": "default", "prompt": "123+45=", "max_tokens": 8, "temperature": 0}


def send(url: str, path: str, body):
    """post(), or (None, why) where the connection failed: refused, reset, cut short (the server went down)."""
    import http.client

    try:
        return post(url + path, body, timeout=120)
    except (OSError, http.client.HTTPException) as exc:
        return None, repr(exc)


def known_problem_answer(url: str):
    status, reply = send(url, "/v1/completions", KNOWN_PROBLEM)
    return reply["choices"][0]["text"].strip() if status == 200 else (status, reply)


def error_message(reply) -> str:
    """The message of an error reply: a JSON error, or a streamed one (its first event)."""
    if isinstance(reply, str) and reply.startswith("data: "):
        reply = json.loads(reply.split("\n", 1)[0].removeprefix("data: "))
    if isinstance(reply, dict):
        return reply.get("message") or reply.get("error", {}).get("message", "")
    return str(reply)
