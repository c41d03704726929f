"""HTTP side of an experiment: one streamed, timed request, and the admin calls that switch arms."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from lynx_sglang.config import ADMIN_TOKEN_HEADER, LIVE_SETTINGS

from .arms import Arm

ENDPOINTS = ("completions", "chat")
REQUEST_TIMEOUT_S = 600.0


class ServerError(RuntimeError):
    """The server is unreachable, refused us, or died; the message is one line for the user."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status when the server answered one


def error_reason(error: urllib.error.HTTPError) -> str | None:
    """The server's own reason in an error's body (SGLang's OpenAI routes answer {"message": ...}, the
    others and ours {"error": ...}); None where the body gives none."""
    try:
        body = json.loads(error.read())
    except (ValueError, OSError, AttributeError):
        return None
    detail = body.get("message") or body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        detail = detail.get("message")
    return str(detail) if detail else None


class ArmRefused(ServerError):
    """The server refused an arm's setting (HTTP 400 from POST /lynx/policy): the server is fine, the
    setting does not fit the model; a sweep skips the arm and goes on."""


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    ttft_ms: float
    tpot_ms: float | None  # None with fewer than two output tokens
    e2e_ms: float


def request_body(prompt: str, endpoint: str, max_tokens: int) -> dict:
    body = {"model": "default", "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        return {**body, "messages": [{"role": "user", "content": prompt}]}
    return {**body, "prompt": prompt}


def chunk_text(chunk: dict, endpoint: str) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if endpoint == "chat":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


def api_headers(api_key: str | None) -> dict[str, str]:
    """JSON, and SGLang's --api-key where the server has one (its middleware reads Authorization)."""
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def stream_completion(base_url: str, prompt: str, *, endpoint: str = "completions", max_tokens: int = 16,
                      api_key: str | None = None) -> Completion:
    """Send one greedy streaming request; time the first token, each later token and the whole."""
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    data = json.dumps(request_body(prompt, endpoint, max_tokens)).encode()
    request = urllib.request.Request(base_url + path, data=data, headers=api_headers(api_key))
    started = time.perf_counter()
    arrivals: list[float] = []  # chunks with text or the finish (EOS's has no text); one may carry several tokens
    pieces: list[str] = []
    usage_tokens = None
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        for line in response:
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            if chunk.get("choices") and (chunk_text(chunk, endpoint) or chunk["choices"][0].get("finish_reason")):
                arrivals.append(time.perf_counter())
                pieces.append(chunk_text(chunk, endpoint))
    ended = time.perf_counter()
    first = arrivals[0] if arrivals else ended
    tokens = usage_tokens if usage_tokens is not None else len(arrivals)
    # per token, not per chunk: a server that sends several tokens in one chunk (a busy one) made the
    # per-chunk figure up to tokens/chunks too high
    tpot = (arrivals[-1] - first) * 1000 / (tokens - 1) if tokens > 1 and arrivals else None
    return Completion("".join(pieces), tokens, (first - started) * 1000, tpot, (ended - started) * 1000)


class AdminClient:
    """The /lynx/* calls an experiment needs, with errors turned into one-line ServerErrors. token: the
    server's --lynx-admin-token; api_key and admin_api_key: SGLang's --api-key and --admin-api-key,
    when the server has them (SGLang takes the admin key alone on its admin routes, the POSTs here)."""

    def __init__(self, base_url: str, token: str | None, api_key: str | None = None,
                 admin_api_key: str | None = None):  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.api_key = api_key
        self.admin_api_key = admin_api_key

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> dict:
        headers = api_headers(self.admin_api_key if method == "POST" and self.admin_api_key else self.api_key)
        if self.token:  # in its own header: Authorization may carry the API key
            headers[ADMIN_TOKEN_HEADER] = self.token
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ServerError(self._http_message(method, path, error), error.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"cannot reach {self.base_url} ({reason})") from None

    def _http_message(self, method: str, path: str, error: urllib.error.HTTPError) -> str:
        detail = error_reason(error) or ""
        if error.code == 401 and method == "POST":
            return (f"{self.base_url}{path} wants SGLang's admin key ({detail or 'HTTP 401'}); pass the server's "
                    "--admin-api-key as --admin-api-key, or its --api-key as --api-key where it has no admin key")
        if error.code == 401:
            return (f"{self.base_url} wants SGLang's API key ({detail or 'HTTP 401'}); pass the server's --api-key "
                    "as --api-key")
        if error.code == 403:
            return f"{self.base_url} refused the admin token ({detail or 'HTTP 403'}); pass the server's --lynx-admin-token as --admin-token"
        if error.code == 404:
            return f"{self.base_url}{path} not found: is this a lynx-sglang server?"
        return f"{self.base_url}{path}: HTTP {error.code} {detail}".rstrip()

    def policy(self) -> dict:
        return self._call("GET", "/lynx/policy")

    def stats(self) -> dict:
        return self._call("GET", "/lynx/stats")

    def reset_stats(self) -> None:
        self._call("POST", "/lynx/stats/reset", {})

    def set_policy(self, body: dict) -> dict:
        """POST /lynx/policy as it is (`{"budget": ...}` alone changes only the budget)."""
        return self._call("POST", "/lynx/policy", body)

    def switch(self, arm: Arm) -> dict:
        """Put the server exactly in `arm`'s setting. The server merges parameters into those of an
        unchanged policy, so pass through `baseline` first: the arm's parameters then stand alone."""
        if arm.policy != "baseline":
            self.set_policy({"policy": "baseline", "budget": None})
        try:
            state = self.set_policy(arm.request_body())
        except ServerError as error:
            kind = ArmRefused if error.status == 400 else ServerError
            raise kind(f"arm {arm.label}: {error}", error.status) from None
        if state.get("policy") != arm.policy or (state.get("params") or {}) != arm.params:
            raise ServerError(f"arm {arm.label}: the server reports {state.get('policy')} {state.get('params')} after the switch")
        return state

    def restore(self, setting: dict) -> dict:
        """Put the server back in `setting` (setting_of a GET /lynx/policy), applied as a whole config."""
        return self.set_policy({"config": setting})

    def check_admin(self) -> dict:
        """Reachable, a lynx-sglang server, and the token accepted (a harmless reset proves it)."""
        state = self.policy()
        self.reset_stats()
        return state


def setting_of(state: dict) -> dict:
    """The server's live setting in a GET /lynx/policy answer, as the whole config that restores it."""
    return {name: state[name] for name in LIVE_SETTINGS if state.get(name) is not None}


def served_scope(state: dict) -> dict:
    """The server's `layers` and `prune_mixed` where they are not the defaults (all layers, pure decode
    steps only). A switch of policy, params and budget keeps them, so every arm given as a policy (not
    a config file) runs with them: a config written from such arms must carry them."""
    scope = {}
    if state.get("layers") is not None:
        scope["layers"] = list(state["layers"])
    if state.get("prune_mixed"):
        scope["prune_mixed"] = True
    return scope


def describe_scope(scope: dict) -> str:
    """served_scope's settings as the serve flags that set them; "" for the defaults."""
    parts = []
    if "layers" in scope:
        parts.append(f"layers {','.join(str(layer) for layer in scope['layers'])} only (--lynx-layers)")
    if scope.get("prune_mixed"):
        parts.append("mixed batches pruned too (--lynx-prune-mixed)")
    return " and ".join(parts)


def describe_setting(setting: dict) -> str:
    """A setting_of as one short phrase: `lynx {'alpha': 1} budget experts=3`, `anchor, a schedule`."""
    text = setting.get("policy", "baseline")
    if setting.get("params"):
        text += f" {setting['params']}"
    if setting.get("budget"):
        text += f" budget {setting['budget']}"
    if setting.get("schedule"):
        text += f", a schedule of {len(setting['schedule'])} bands"
    scope = describe_scope(served_scope(setting))
    return text + (f", {scope}" if scope else "")
