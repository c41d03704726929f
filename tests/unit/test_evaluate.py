"""`lynx-sglang eval` end to end over HTTP, against a small OpenAI-style server whose answers we choose."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lynx_sglang.embedded.task import solve
from lynx_sglang.evaluate import main as eval_main


class AnswerServer:
    """Answers `/v1/completions` and `/v1/chat/completions` exactly, except for the kinds told to fail."""

    def __init__(self, wrong_kinds=()):
        self.prompts: list[str] = []
        self.wrong_kinds = set(wrong_kinds)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, prompt: str) -> str:
        kind = "rev" if prompt.startswith("r") else {"+": "add", "*": "mul"}.get(
            next((c for c in prompt if c in "+*"), "-"), "sub"
        )
        return "wrong\n" if kind in self.wrong_kinds else solve(prompt) + "\n"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/completions":
                    prompt = body["prompt"]
                    reply = {"choices": [{"text": server.answer(prompt)}]}
                else:
                    prompt = body["messages"][0]["content"]
                    reply = {"choices": [{"message": {"content": server.answer(prompt)}}]}
                server.prompts.append(prompt)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def run_eval(capsys, server, *args):
    rc = eval_main(["--url", server.url, "--concurrency", "8", *args])
    return rc, capsys.readouterr().out


def test_report_gives_every_kind_and_the_total(capsys):
    with AnswerServer(wrong_kinds={"mul"}) as server:
        rc, out = run_eval(capsys, server, "--count", "200")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("200 distinct held-out problems, digits operands, seed 1234, via /v1/completions")
    assert lines[1:] == [
        "kind  correct  total  accuracy",
        "add        50     50   100.00%",
        "sub        50     50   100.00%",
        "mul         0     50     0.00%",
        "rev        50     50   100.00%",
        "all       150    200    75.00%",
    ]


def test_json_report_per_kind_over_the_chat_endpoint(capsys):
    with AnswerServer(wrong_kinds={"sub", "rev"}) as server:
        rc, out = run_eval(capsys, server, "--count", "40", "--endpoint", "chat", "--distribution", "uniform", "--json")
    assert rc == 0
    report = json.loads(out)
    assert (report["correct"], report["total"], report["accuracy"]) == (20, 40, 0.5)
    assert report["by_kind"]["add"] == {"correct": 10, "total": 10, "accuracy": 1.0}
    assert report["by_kind"]["sub"] == {"correct": 0, "total": 10, "accuracy": 0.0}
    assert (report["distribution"], report["distinct"], report["endpoint"]) == ("uniform", True, "chat")


def full_length_share(prompts, kind_char="+"):
    operands = [x for p in prompts if kind_char in p for x in p[:-1].split(kind_char)]
    return sum(len(x) == 3 for x in operands) / len(operands)


def test_distribution_flag_chooses_how_operands_are_drawn(capsys):
    with AnswerServer() as digits_server:
        run_eval(capsys, digits_server, "--count", "800")
    with AnswerServer() as uniform_server:
        run_eval(capsys, uniform_server, "--count", "800", "--distribution", "uniform")
    # 3-digit operands: about 1 in 3 when the digit count is drawn first, 9 in 10 when values are uniform.
    assert full_length_share(digits_server.prompts) < 0.5
    assert full_length_share(uniform_server.prompts) > 0.8


def test_problems_are_distinct_unless_asked_otherwise(capsys):
    with AnswerServer() as distinct_server:
        run_eval(capsys, distinct_server, "--count", "800")
    with AnswerServer() as repeats_server:
        run_eval(capsys, repeats_server, "--count", "800", "--no-distinct")
    assert len(set(distinct_server.prompts)) == len(distinct_server.prompts) == 800
    assert len(set(repeats_server.prompts)) < 800


@pytest.mark.parametrize(
    "args,message",
    [
        (["--count", "0"], "--count must be at least 1"),
        (["--count", "2400"], "found only"),  # 600 distinct products asked for; ~587 are held out
        (["--distribution", "normal"], "invalid choice: 'normal'"),
    ],
)
def test_bad_arguments_are_rejected(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        eval_main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unreachable_server_is_an_error_not_a_score(capsys):
    with AnswerServer() as server:
        url = server.url
    rc = eval_main(["--url", url, "--count", "4"])
    assert rc == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("body, detail", [
    (b'{"object": "error", "message": "As of transformers v4.44, tokenizer.chat_template is not set", '
     b'"type": "BadRequestError", "code": 400}', "As of transformers v4.44, tokenizer.chat_template is not set"),
    (b'{"error": {"message": "bad ids"}}', "bad ids"),
    (b'{"error": "Unauthorized"}', "Unauthorized"),
    (b"<html>oops</html>", "Bad Request"),
])
def test_an_http_error_says_the_servers_reason(body, detail):
    """`eval --endpoint chat` on a checkpoint without a chat template said only `HTTP 400 (Bad Request)`."""
    import io
    import urllib.error

    from lynx_sglang.evaluate import error_detail

    error = urllib.error.HTTPError("http://x/v1/chat/completions", 400, "Bad Request", {}, io.BytesIO(body))
    assert error_detail(error) == detail
