"""Where a `--model-path` lives: a checkpoint folder, or a Hugging Face Hub repository id
(`Qwen/Qwen3-30B-A3B`), as SGLang takes both. Before the launch lynx-sglang reads only the model's
config.json; for a Hub id that file alone is fetched (or read from the Hugging Face cache), and SGLang
downloads the weights itself, as it always does."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from lynx_sglang.config import ConfigError

# owner/name with the characters the Hub allows; a path that exists locally always wins.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(model_path: Path | str) -> bool:
    """Whether a model path that is not a local file or folder names a Hub repository."""
    text = str(model_path)
    return not Path(text).expanduser().exists() and _HUB_ID.fullmatch(text) is not None and ".." not in text


def model_name(model_path: Path | str) -> str:
    """The model's name as SGLang's config names it: a Hub id as given, else the folder's name."""
    return str(model_path) if is_hub_id(model_path) else Path(model_path).expanduser().resolve().name


def local_config_dir(model_path: Path, revision: str | None = None) -> Path:
    """A local folder that holds the model's config.json: `model_path` itself, or for a Hub id the
    Hugging Face cache's snapshot folder where config.json was fetched (from the cache alone when it
    is there or HF_HUB_OFFLINE=1 is set). Other paths come back unchanged for the caller's checks."""
    if not is_hub_id(model_path):
        return model_path
    if os.environ.get("SGLANG_USE_MODELSCOPE", "").lower() in ("true", "1", "yes", "y"):  # as SGLang reads it
        raise ConfigError(f"model path {model_path} does not exist here, and with SGLANG_USE_MODELSCOPE set it "
                          "would come from ModelScope, which lynx-sglang does not read: download it first "
                          f"(modelscope download --model {model_path} --local_dir DIR) and pass the folder")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = str(model_path)
    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=True)).parent
    except LocalEntryNotFoundError as exc:
        if constants.HF_HUB_OFFLINE:
            raise ConfigError(_hub_problem(repo_id, revision, exc)) from None
    except Exception as exc:  # noqa: BLE001 - every Hub error becomes one clear line
        raise ConfigError(_hub_problem(repo_id, revision, exc)) from None
    print(f"lynx-sglang: fetching config.json of {repo_id} from the Hugging Face Hub", file=sys.stderr, flush=True)
    try:
        # One try first: without a network (or for a mistyped folder) this fails at once, where the
        # download would retry for about 20 s.
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision), timeout=10)
        return Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(_hub_problem(repo_id, revision, exc)) from None


def _hub_problem(repo_id: str, revision: str | None, exc: Exception) -> str:
    import httpx
    from huggingface_hub import errors

    where = f"model path {repo_id} does not exist here, and as a Hugging Face Hub id"
    if isinstance(exc, errors.GatedRepoError):
        return f"{where} it is gated: accept its terms on huggingface.co, then log in (hf auth login) or set HF_TOKEN"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return f"{where} it names no repository (a private one needs hf auth login or HF_TOKEN)"
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{where} it has no revision {revision!r}"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return (f"{where} its config.json is not in the Hugging Face cache and the Hub could not be reached "
                "(no network, or HF_HUB_OFFLINE=1): download it first, or pass a checkpoint folder")
    if isinstance(exc, errors.EntryNotFoundError):
        return f"{where} it has no config.json; not a transformers model"
    if isinstance(exc, (OSError, httpx.TransportError)):
        return (f"{where} its config.json is not in the Hugging Face cache and the Hub could not be reached "
                f"({exc}): download it first, or pass a checkpoint folder")
    return f"{where} its config.json could not be fetched: {type(exc).__name__}: {exc}"
