"""The app of SGLang's HTTP worker processes (`--tokenizer-worker-num N` > 1): SGLang's own, with the
lynx routes, metrics and request checks the launcher adds with one worker. The plugin points
SGLANG_HTTP_SERVER_APP_PATH here; SGLang loads no plugin in these processes itself."""

from sglang.srt.entrypoints.http_server import app

from lynx_sglang.plugin import load_in_http_worker

load_in_http_worker(app)

__all__ = ["app"]
