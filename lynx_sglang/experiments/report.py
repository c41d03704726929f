"""What the `ab` and `sweep` reports (report.md) share: the title block, what was run, the versions."""

from __future__ import annotations

from .client import describe_scope


def header(title: str, results: dict) -> list[str]:
    """The title, a warning when the run did not complete, and the command."""
    lines = [f"# {title}", ""]
    if results["status"] != "complete":
        lines += [f"**Partial results** ({results['status']}: {results['message']}); "
                  f"{results['blocks']} blocks measured.", ""]
    return lines + [f"`{results['config']['command']}`", ""]


def what_ran(results: dict) -> str:
    """When, where, which model and which requests: the first words under the command."""
    config, versions = results["config"], results["versions"]
    return (f"{results['date']}, {versions['machine']}, model {model_text(versions['model'])}; task {config['task']} "
            f"({config['n']} items, seed {config['seed']}, score {config['score']}), /v1/{config['endpoint']}, "
            f"greedy, at most {config['max_tokens']} output tokens{scope_note(results.get('server_scope'))}")


def scope_note(scope: dict | None) -> str:
    """Where the server limits pruning (--lynx-layers, --lynx-prune-mixed): arms switched by policy keep it."""
    text = describe_scope(scope or {})
    return f" (the server's {text}: every arm given as a policy ran with it)" if text else ""


def model_text(model: dict) -> str:
    if "url" in model:
        return f"served at {model['url']}"
    return f"{model['name']} (weights sha256 {model['weights_sha256'][:12]})"


def versions_section(versions: dict) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in versions["packages"].items())
    return ["## Versions", "", f"`{packages}, python {versions['python']}`", ""]
