"""The stand-in `sgl_kernel`'s stubs: functions that name themselves when called."""

from __future__ import annotations


def stub(qualified_name: str):
    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"{qualified_name} is not available: sgl_kernel does not import on this machine and "
            "lynx-sglang's GPU runtime has no replacement for it"
        )

    unavailable.__name__ = qualified_name.rpartition(".")[2]
    unavailable.__qualname__ = qualified_name
    return unavailable
