"""Name -> policy class resolution: built-ins, the entry-point group `lynx_sglang.policies`, and
`package.module:ClassName` paths. Construction validates every parameter (python values) once."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

from .base import Policy, PolicyConfigError
from .lynx import LynxPolicy, LynxV1Policy
from .peers import (
    BaselinePolicy,
    BudgetPolicy,
    CoveragePolicy,
    OeaPolicy,
    RandomPolicy,
    StaticTopKPolicy,
    TopNPolicy,
)

ENTRY_POINT_GROUP = "lynx_sglang.policies"

BUILTIN_POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        BaselinePolicy,
        LynxPolicy,
        LynxV1Policy,
        OeaPolicy,
        BudgetPolicy,
        TopNPolicy,
        StaticTopKPolicy,
        RandomPolicy,
        CoveragePolicy,
        importlib.import_module(".anchor", __package__).AnchorPolicy,
    )
}

# Parameters every policy takes; get_policy passes them, so they are not "extra" parameters.
_COMMON_PARAMETERS = ("num_experts", "top_k", "renormalize")


def _entry_point_policies() -> dict:
    """Installed third-party policies: name -> EntryPoint (loaded only when asked for)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_policies() -> list[str]:
    """Names `get_policy` accepts (besides `package.module:ClassName` paths), sorted."""
    return sorted(set(BUILTIN_POLICIES) | set(_entry_point_policies()))


def _import_path(path: str) -> type:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PolicyConfigError(f"policy '{path}': cannot import module '{module_name}': {error}") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - its top-level code runs in the scheduler
        # a module that fails, or exits, as it is imported (a script: idlelib parses the scheduler's own
        # argv and calls sys.exit) must not take the process that imports it down
        raise PolicyConfigError(f"policy '{path}': importing module '{module_name}' failed: "
                                f"{type(error).__name__}: {error}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise PolicyConfigError(f"policy '{path}': module '{module_name}' has no '{attribute}'") from None


def resolve_policy_class(name: str) -> type[Policy]:
    """The class for a built-in name, an entry-point name or a `package.module:ClassName` path."""
    if not isinstance(name, str) or not name:
        raise PolicyConfigError(
            f"policy name must be a non-empty string, got {name!r}; available: "
            + ", ".join(available_policies())
        )
    if name in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name]
    plugins = _entry_point_policies()
    if name in plugins:
        cls = plugins[name].load()
    elif ":" in name:
        cls = _import_path(name)
    else:
        raise PolicyConfigError(
            f"unknown policy {name!r}; available: {', '.join(available_policies())} "
            "(or a 'package.module:ClassName' path)"
        )
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise PolicyConfigError(f"policy '{name}' resolves to {cls!r}, which is not a Policy subclass")
    return cls


def accepted_parameters(cls: type[Policy]) -> list[str] | None:
    """Keyword parameters a policy class takes beyond num_experts/top_k/renormalize
    (None when its __init__ takes **kwargs and so checks them itself)."""
    signature = inspect.signature(cls.__init__)
    names = []
    for parameter in list(signature.parameters.values())[1:]:  # skip self
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL or parameter.name in _COMMON_PARAMETERS:
            continue
        names.append(parameter.name)
    return names


def get_policy(name: str, num_experts: int, top_k: int, renormalize: bool = True, **params) -> Policy:
    """Build a policy.

    get_policy("lynx", num_experts=128, top_k=8, renormalize=True, model_name="Qwen3-30B-A3B")
    Raises PolicyConfigError (a ValueError) for an unknown name, an unknown parameter, or a value
    out of range, with a message naming the parameter, the value and what is allowed.
    """
    cls = resolve_policy_class(name)
    accepted = accepted_parameters(cls)
    if accepted is not None:
        for parameter in params:
            if parameter not in accepted:
                raise PolicyConfigError(
                    f"policy '{name}': unknown parameter '{parameter}'; accepted: "
                    + (", ".join(accepted) if accepted else "(none)")
                )
    return cls(num_experts, top_k, renormalize, **params)
