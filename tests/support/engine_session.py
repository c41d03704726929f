"""One offline session with `lynx_sglang.engine.Engine` on the embedded model, in its own process (SGLang's
engine spawns its scheduler, which imports the main module again: pytest's would not do). Writes what
it saw as JSON to the path given.

    python tests/support/engine_session.py OUT.json [DP_SIZE]
"""

import json
import sys
import time

from lynx_sglang.embedded.task import heldout_problems, score
from lynx_sglang.evaluate import MAX_ANSWER_TOKENS
from lynx_sglang.server.channel import SchedulerError, SchedulerUnavailable

GREEDY = {"temperature": 0, "max_new_tokens": MAX_ANSWER_TOKENS}


def solve(engine, problems) -> float:
    outputs = engine.generate([p.prompt for p in problems], GREEDY)
    return score(problems, [o["text"] for o in outputs]).accuracy


def bad_requests(engine) -> dict:
    """What a caller gets for ids the model cannot embed (without the checks, the scheduler died)."""
    refused = {}
    for name, ids in (("outside_vocabulary", [5, 100000]), ("not_integers", [5, "7"])):
        try:
            engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 2})
            refused[name] = None
        except ValueError as error:
            refused[name] = str(error)
    return refused


def main(out_path: str, dp_size: int = 1) -> None:
    from lynx_sglang.engine import Engine

    seen = {}
    engine = Engine(lynx_policy="lynx", log_level="warning", dp_size=dp_size)
    try:
        seen["policy"] = engine.lynx.policy()
        seen["accuracy_lynx"] = solve(engine, heldout_problems(96, seed=61, distinct=True))
        seen["stats_lynx"] = engine.lynx.stats()
        try:
            engine.lynx.set_policy(policy="no-such-policy")
        except SchedulerError as error:
            seen["refused"] = str(error)
        seen["after_refusal"] = engine.lynx.policy()
        seen["switched"] = engine.lynx.set_policy(policy="budget", params={"num_experts_kept": 2})
        engine.lynx.reset_stats()
        seen["accuracy_budget"] = solve(engine, heldout_problems(64, seed=62, distinct=True))
        seen["stats_budget"] = engine.lynx.stats()
        seen["bad_requests"] = bad_requests(engine)
        seen["answer_after_bad_requests"] = engine.generate("12+34=", GREEDY)["text"]
    finally:
        engine.shutdown()
    started = time.monotonic()
    try:
        engine.lynx.stats()
    except SchedulerUnavailable as error:
        seen["after_shutdown"] = {"error": str(error), "seconds": time.monotonic() - started}
    with open(out_path, "w") as f:
        json.dump(seen, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:3]))
