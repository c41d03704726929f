"""The request bench serve sends, in its levels and its profiles: greedy, streamed, a fixed length."""

from __future__ import annotations

import json
import urllib.request


def greedy_stream_request(url: str, prompt: list[int], output_tokens: int) -> urllib.request.Request:
    """POST /generate of `prompt`'s token ids for exactly `output_tokens` tokens (ignore_eos), streamed."""
    body = {"input_ids": prompt, "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": output_tokens, "ignore_eos": True}}
    return urllib.request.Request(url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"})
