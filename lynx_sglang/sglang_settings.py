"""The SGLang settings a user gave, read under SGLang's keyword (ServerArgs field) names whether they
came as `lynx-sglang serve`'s command-line flags or as the offline engine's keywords, so that both
entry points pass the same checks and get the same machine defaults."""

from __future__ import annotations

from dataclasses import dataclass

# SGLang's flags for the settings the checks read, where there is more than `--<name>` (`--tp` is
# argparse's abbreviation of `--tp-size`, which SGLang's parser accepts).
TP_FLAGS = ("--tp", "--tp-size", "--tensor-parallel-size")
EP_FLAGS = ("--ep-size", "--expert-parallel-size", "--ep")
SETTING_FLAGS = {"tp_size": TP_FLAGS, "ep_size": EP_FLAGS,
                 "attn_dp_size": ("--attn-dp-size", "--attention-data-parallel-size"),
                 "moe_dp_size": ("--moe-dp-size", "--moe-data-parallel-size"),
                 "dp_size": ("--dp-size", "--data-parallel-size"),
                 "pp_size": ("--pp-size", "--pipeline-parallel-size")}  # fmt: skip
# SGLang's spelling of --disable-cuda-graph, which it now warns is deprecated.
NO_CUDA_GRAPHS = {"cuda_graph_backend_decode": "disabled", "cuda_graph_backend_prefill": "disabled"}


@dataclass(frozen=True)
class FlagSettings:
    """SGLang settings as `serve`'s command line gives them (`--tp-size 2`, `--x=V`), read by name."""

    args: list[str]

    def given(self, name: str) -> bool:
        return any(_has_flag(self.args, flag) for flag in _spellings(name))

    def value(self, name: str) -> str | None:
        return _flag_value(self.args, *_spellings(name))

    def enabled(self, name: str) -> bool:  # a flag that takes no value
        return self.given(name)


@dataclass(frozen=True)
class KeywordSettings:
    """SGLang settings as the offline engine's keywords give them (`tp_size=2`), read by name."""

    kwargs: dict

    def given(self, name: str) -> bool:
        return name in self.kwargs

    def value(self, name: str) -> str | None:
        value = self.kwargs.get(name)
        return None if value is None else str(value)

    def enabled(self, name: str) -> bool:
        return bool(self.kwargs.get(name))


GivenSettings = FlagSettings | KeywordSettings


def as_flags(settings: dict) -> list[str]:
    """Settings by name -> SGLang's command-line flags (True: a flag that takes no value)."""
    flags = []
    for name, value in settings.items():
        flags += [_flag(name)] if value is True else [_flag(name), str(value)]
    return flags


def defaults_not_given(defaults: dict, given: GivenSettings) -> dict:
    return {name: value for name, value in defaults.items() if not given.given(name)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _spellings(name: str) -> tuple[str, ...]:
    return SETTING_FLAGS.get(name, (_flag(name),))


def _has_flag(args: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def _flag_value(args: list[str], *names: str) -> str | None:
    """The value of SGLang's flag under any of its names (`--x V` or `--x=V`; last one wins)."""
    value = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in names:
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
    return value
