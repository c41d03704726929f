"""SGLang's management requests that a bad call turns into the scheduler's death, answered instead.

`/start_expert_distribution_record` (and stop, dump) on a server started without
`--expert-distribution-recorder-mode`, or `/send_weights_to_remote_instance` naming a group never
set up, raise in the scheduler's request dispatcher, and an exception there stops the scheduler and
so the whole server. SGLang leaves these endpoints open unless `--admin-api-key` is set.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"


def register(register_hook) -> None:
    register_hook(f"{SCHEDULER}.expert_distribution_handle", around_expert_distribution, "AROUND")
    register_hook(f"{SCHEDULER}.send_weights_to_remote_instance", around_send_weights, "AROUND")


def around_expert_distribution(original, scheduler, request, *args, **kwargs):
    try:
        return original(scheduler, request, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the request fails, the server stays
        from sglang.srt.managers.io_struct import ExpertDistributionReqOutput

        # its output has no field for a failure: the HTTP answer stays SGLang's, the log says why
        logger.warning("lynx-sglang: expert distribution request %s refused, the server goes on: %s",
                       getattr(request, "action", request), exc)
        return ExpertDistributionReqOutput()


def around_send_weights(original, scheduler, request, *args, **kwargs):
    try:
        return original(scheduler, request, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the request fails (HTTP 400), the server stays
        from sglang.srt.managers.io_struct import SendWeightsToRemoteInstanceReqOutput

        return SendWeightsToRemoteInstanceReqOutput(success=False, message=f"{type(exc).__name__}: {exc}")
