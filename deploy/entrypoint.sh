#!/bin/sh
# Entrypoint of both images: `lynx-sglang serve`, configured by the environment.
#   LYNX_*       lynx-sglang's own settings, read by lynx-sglang itself (docs/usage.md)
#   MODEL_PATH   checkpoint folder inside the container (default: the embedded model)
#   PORT         port inside the container (default: 30000)
#   SGLANG_ARGS  more SGLang flags, split on spaces, e.g. "--tp 2 --mem-fraction-static 0.85"
# Arguments (compose's `command`) come last, so they win over all of the above.
set -euf  # -f: no filename globbing when SGLANG_ARGS is split
exec lynx-sglang serve --host 0.0.0.0 --port "${PORT:-30000}" ${MODEL_PATH:+--model-path "$MODEL_PATH"} ${SGLANG_ARGS:-} "$@"
