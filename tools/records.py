"""The JSON records that benchmarks and GPU stages write, read back by the scripts that turn them into
tables: a file that is missing, not JSON or not the record expected is one line saying so."""

from __future__ import annotations

import json
from pathlib import Path


class RecordError(ValueError):
    """A record a table cannot be made from; the message says what is wrong in it."""


def read_record(path: Path, required: tuple[str, ...], kind: str) -> dict:
    """The JSON object in `path`, with at least the keys `required` (`kind` names it in errors)."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as error:
        raise RecordError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: not valid JSON ({getattr(error, 'msg', error)})") from None
    missing = [key for key in required if key not in record] if isinstance(record, dict) else list(required)
    if not isinstance(record, dict) or missing:
        raise RecordError(f"{path}: not {kind} (missing {', '.join(missing) or 'everything'})")
    return record
