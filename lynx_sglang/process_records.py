"""`plugin-<pid>.json`: the record each SGLang process leaves in the runtime directory when it loads
the plugin (its role and hooks), and the reading of them that `GET /lynx/info` serves."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lynx_sglang import __version__


def write_process_record(directory: Path, role: str, hooks: list[str]) -> None:
    record = {"pid": os.getpid(), "role": role, "loaded_at": time.time(), "version": __version__, "hooks": hooks}
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".plugin-{os.getpid()}.json.tmp"
    staging.write_text(json.dumps(record))
    staging.replace(directory / f"plugin-{os.getpid()}.json")  # atomic: readers never see half a file


def read_process_records(directory: Path) -> list[dict]:
    records = []
    for path in sorted(directory.glob("plugin-*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a process that is writing right now; it will be there on the next read
    return records
