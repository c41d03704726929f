"""`lynx-sglang policies`: every policy with its parameters, defaults and allowed values.

Ranges are not restated here: each parameter is handed a value of no valid type, and the policy's own
validation says what it allows (the same text a user sees for a bad `--lynx-param`). Defaults are the
signature's, and where that is "decided per model" (None), the value the policy picks for the model
shape shown.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from lynx_sglang.arg_parser import OneLineParser
from lynx_sglang.policies import PolicyConfigError, accepted_parameters, available_policies, get_policy
from lynx_sglang.policies import resolve_policy_class

_NOT_A_VALUE = object()
_HIDDEN = ("layers", "router_kind")  # set by --lynx-layers, and by the server from each layer's router


def allowed_values(name: str, param: str, num_experts: int, top_k: int) -> str:
    try:
        get_policy(name, num_experts, top_k, True, **{param: _NOT_A_VALUE})
    except PolicyConfigError as error:
        text = str(error)
        found = re.search(r"\(allowed: (.*)\)$", text) or re.search(r"must be (.*)$", text)
        return found.group(1) if found else text
    except (TypeError, ValueError) as error:
        return f"see the policy's documentation ({error})"
    return "any value"


def params_in_effect(policy) -> dict:
    """A built policy's parameters as it decides: those given, and each default as resolved for the
    model's shape and router (lynx's alpha and beta, budget's kept count). A parameter the policy keeps
    under another attribute name is left out."""
    values = {}
    for param in accepted_parameters(type(policy)) or []:
        value = getattr(policy, param, _NOT_A_VALUE)
        if param in _HIDDEN or value is _NOT_A_VALUE:
            continue
        if hasattr(value, "tolist"):  # a tensor (a host read: the control path only)
            value = value.tolist()
        values[param] = list(value) if isinstance(value, tuple) else value
    return values


def describe(name: str, num_experts: int, top_k: int, model_name: str | None, router_kind: str | None = None) -> dict:
    cls = resolve_policy_class(name)
    signature = inspect.signature(cls.__init__).parameters
    accepted = accepted_parameters(cls) or []
    extra = {key: value for key, value in (("model_name", model_name), ("router_kind", router_kind))
             if value and key in accepted}
    try:
        instance, unavailable = get_policy(name, num_experts, top_k, True, **extra), None
    except PolicyConfigError as error:  # e.g. static-topk on a top-1 model: listed, marked as not for it
        instance, unavailable = None, str(error)
    parameters = []
    for param in accepted:
        if param in _HIDDEN:
            continue
        default = signature[param].default
        if default is None and getattr(instance, param, None) is not None:
            default = f"{getattr(instance, param)} (for this model)"
        allowed = "-" if unavailable else allowed_values(name, param, num_experts, top_k)
        parameters.append({"name": param, "default": default, "allowed": allowed})
    first_paragraph = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
    summary = first_paragraph.split(". ")[0].rstrip(".") + "."
    return {"name": name, "summary": summary, "unavailable": unavailable, "parameters": parameters}


def main(argv=None) -> int:
    parser = OneLineParser(prog="lynx-sglang policies", description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", help="show per-model defaults for this checkpoint "
                                             "(default: the embedded model)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    from lynx_sglang.config import ConfigError
    from lynx_sglang.embedded import EMBEDDED_MODEL_DIR
    from lynx_sglang.model_config import MoeShape

    try:
        shape = MoeShape.from_checkpoint(Path(args.model_path) if args.model_path else EMBEDDED_MODEL_DIR)
    except ConfigError as error:
        parser.error(str(error))
    if shape is None:
        parser.error(f"{args.model_path} has no routed experts")
    catalog = [describe(name, shape.num_experts, shape.top_k, shape.model_name, shape.router_kind)
               for name in available_policies()]
    router = shape.router_kind or "softmax"
    if args.json:
        print(json.dumps({"model": shape.model_name, "num_experts": shape.num_experts, "top_k": shape.top_k,
                          "router_kind": router, "policies": catalog}, default=str, indent=2))
        return 0
    print(f"Policies (defaults for {shape.num_experts} experts, top-{shape.top_k}, a {router} router; "
          "set with --lynx-policy NAME --lynx-param KEY=VALUE):\n")
    for entry in catalog:
        print(f"{entry['name']}: {entry['summary']}")
        if entry["unavailable"]:
            print(f"    not for this model: {entry['unavailable']}")
        for p in entry["parameters"]:
            print(f"    {p['name']:18s} default {p['default']!s:22s} allowed {p['allowed']}")
        print()
    return 0
