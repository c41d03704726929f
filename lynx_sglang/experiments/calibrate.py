"""`lynx-sglang calibrate`: the setting that is safe for your model and your load, measured.

    lynx-sglang calibrate                                   # the embedded model, the built-in task
    lynx-sglang calibrate --model-path DIR --task items.jsonl --max-loss 1 --concurrency 8,32 --out calib
    lynx-sglang calibrate --url http://127.0.0.1:30000 --admin-token T --task items.jsonl --out calib

Sweeps candidate settings on calibration items at each concurrency level, chooses per decode-batch-size
band the setting that reads the fewest expert bytes while the lower end of the 95 % interval of the
accuracy difference stays above -(max-loss - margin) points, then confirms the chosen config against
baseline on held-out items it never calibrated on. Writes lynx-config.yaml (load it with
`lynx-sglang serve --lynx-config FILE`), report.md and results.json under --out; see
docs/calibration.md.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from . import ab, sweep
from .arms import ArmSpecError, check_policy_names, parse_arms
from rich.console import Console

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR

from .analysis import LossBound
from .calibrate_report import baseline_warning, publish
from .calibration import choose, config_for, config_yaml
from .client import AdminClient, ServerError, describe_scope, served_scope, setting_of
from .cli_args import add_common_arguments, command_parser, parse_command, parse_levels
from .experiment import restore_setting
from .launch import ManagedServer, terminate_as_interrupt
from .model_arms import calibration_candidates, check_not_all_refused, refusals_before_start, served_shape
from .tasks import BUILTIN_TASK, builtin_items_excluding, load_items, make_scorer

# Why a margin: the confirmation draws new items, so its interval moves by about its own half-width
# around the calibration's estimate. Choosing with the interval's lower end at -(max_loss - margin)
# keeps a setting whose calibration estimate sits at the edge from failing the confirmation by chance.
DEFAULT_MARGIN_POINTS = 0.3


def parse_args(argv):
    parser = command_parser("calibrate", __doc__)
    parser.add_argument("--max-loss", type=float, default=1.0, metavar="POINTS",
                        help="accuracy loss allowed, in points, for the interval's lower end (default 1)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN_POINTS, metavar="POINTS",
                        help=f"held back from --max-loss when choosing (default {DEFAULT_MARGIN_POINTS}; see docs)")
    parser.add_argument("--candidates", help="the candidate arms, in sweep's --policies form (default: derived from "
                                             "the model's experts and top-k)")
    parser.add_argument("--confirm-n", type=int, default=2000, help="held-out items for the confirmation (default 2000)")
    add_common_arguments(parser, default_n=1000, default_levels="8,32", default_out="calibration")
    args = parse_command(parser, argv)
    if not 0 < args.max_loss <= 100:
        parser.error("--max-loss must be in (0, 100] points")
    if not 0 <= args.margin < args.max_loss:
        parser.error("--margin must be at least 0 and below --max-loss")
    if args.confirm_n < 1:
        parser.error("--confirm-n must be at least 1")
    return args


def split_items(args) -> tuple[list, list]:
    """Calibration and confirmation items, disjoint; a short task file is split in the same proportion.
    The built-in task's held-out partition has about 2,350 distinct problems: the confirmation takes
    its share first, the calibration what is left (fewer products when they run out; the report says)."""
    make_scorer(args.score)
    if args.task == BUILTIN_TASK:
        confirmation = load_items(args.task, args.confirm_n, args.seed)
        calibration = builtin_items_excluding(args.n, args.seed + 1000, {item.prompt for item in confirmation})
        if len(calibration) < args.n:
            print(f"note: the built-in task has {len(calibration)} distinct held-out problems besides the "
                  f"{len(confirmation)} of the confirmation; calibrating on those", file=sys.stderr)
        return calibration, confirmation
    items = load_items(args.task, args.n + args.confirm_n, args.seed)
    if len(items) < args.n + args.confirm_n:
        calibrate_count = max(1, len(items) * args.n // (args.n + args.confirm_n))
        if calibrate_count >= len(items):
            raise ValueError(f"{args.task} has {len(items)} item(s): too few to calibrate and confirm on others")
        print(f"note: {args.task} has {len(items)} items; calibrating on {calibrate_count}, confirming on "
              f"{len(items) - calibrate_count}", file=sys.stderr)
        return items[:calibrate_count], items[calibrate_count:]
    return items[: args.n], items[args.n:]


def write_items(path: Path, items) -> str:
    path.write_text("".join(json.dumps({"prompt": i.prompt, "answer": i.answer, "task": i.task}) + "\n" for i in items))
    return str(path)


def shared_flags(args, url: str, token: str, task: str, count: int) -> list[str]:
    api_key = ["--api-key", args.api_key] if args.api_key else []
    api_key += ["--admin-api-key", args.admin_api_key] if args.admin_api_key else []
    return ["--url", url, "--admin-token", token, *api_key, "--task", task, "--n", str(count), "--concurrency", args.concurrency,
            "--max-tokens", str(args.max_tokens), "--seed", str(args.seed), "--score", args.score,
            "--endpoint", args.endpoint, "--blocks", str(args.blocks), "--bootstrap", str(args.bootstrap)]


def serve_with(args) -> list[str]:
    """The config's header lines that name the model it was calibrated on: on another, its settings still
    load (a budget of 5 experts fits most models) but say nothing of that model's accuracy."""
    # paths as given: they hold from the directory the calibration ran in
    serve = "lynx-sglang serve{} --lynx-config " + shlex.quote(str(Path(args.out) / "lynx-config.yaml"))
    if args.url:
        return [f"Calibrated on the model served at {args.url}; serve that model with:",
                f"  {serve.format(' --model-path MODEL')}"]
    if args.model_path:
        return [f"Calibrated on {args.model_path}; serve it, from where the calibration ran, with:",
                f"  {serve.format(' --model-path ' + shlex.quote(args.model_path))}"]
    return ["Calibrated on the embedded model; serve it, from where the calibration ran, with:",
            f"  {serve.format('')}"]


def loss_bound(max_loss: float, margin: float) -> LossBound:
    """The bound `choose` applies, -(max_loss - margin) points, for the sweep's summary lines: they
    would otherwise name the sweep's own 1 point, which calibrate does not apply."""
    allowed = f"max loss {max_loss:g} point{'' if max_loss == 1 else 's'}"
    return LossBound(max_loss - margin, f"{allowed} less the {margin:g}-point margin" if margin else
                           f"{allowed}, no margin")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        levels = parse_levels(args.concurrency)
        calibration_items, confirmation_items = split_items(args)
        candidates = parse_arms(args.candidates) if args.candidates is not None else None
        check_policy_names(candidates or [], running_server=bool(args.url))
        reference = parse_arms("baseline")[0]  # what the calibration sweep compares with
        if candidates is not None and all(arm == reference for arm in candidates):
            raise ArmSpecError("--candidates holds only baseline, the reference: name a policy to calibrate")
        refused = dict(refusals_before_start(candidates or [], args, EMBEDDED_MODEL_DIR))
        check_not_all_refused(refused, len(set(candidates or []) - {reference}), "every candidate")
    except ValueError as error:
        print(f"lynx-sglang calibrate: error: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    server = admin = original = None
    with terminate_as_interrupt():  # SIGTERM too stops the server started here
        try:
            if args.url:
                url, token = args.url.rstrip("/"), args.admin_token
            else:
                server = ManagedServer(out / "server.log", policy="baseline", model_path=args.model_path,
                                       serve_args=args.serve_arg, port=args.port)
                print(f"starting lynx-sglang serve on port {server.port} (log: {server.log_path})", file=sys.stderr)
                server.wait_healthy()
                url, token = server.url, server.token
            admin = AdminClient(url, token, args.api_key, args.admin_api_key)
            state = admin.policy()
            original = setting_of(state) if args.url else None  # a server started here is stopped at the end
            if candidates is None:
                candidates = default_candidates(url, token, args.api_key)
            return calibrate(args, out, levels, url, token, candidates, calibration_items, confirmation_items, started,
                             scope=served_scope(state))
        except (ServerError, ArmSpecError, OSError) as error:
            print(f"lynx-sglang calibrate: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        finally:
            if server is not None:
                server.stop()
            elif original is not None:
                restore_setting(admin, original, Console(stderr=True))


def default_candidates(url: str, token: str, api_key: str | None) -> list:
    shape = served_shape(url, token, None, EMBEDDED_MODEL_DIR, api_key)
    if shape is None:
        raise ArmSpecError("the model has no routed experts the policies could prune; nothing to calibrate")
    candidates, dropped = calibration_candidates(shape)
    for arm, reason in dropped:
        print(f"  not a candidate: {arm.label} ({reason})", file=sys.stderr)
    if not candidates:
        raise ArmSpecError(f"no default candidate can prune this model ({shape.describe()}); give --candidates")
    return candidates


def calibrate(args, out: Path, levels, url, token, candidates, calibration_items, confirmation_items, started,
              scope: dict | None = None) -> int:
    """`scope`: the server's layers and prune_mixed (client.served_scope); the arms, switched by
    policy, ran with them, so the written config carries them: what it holds is what was measured."""
    scope = scope or {}
    spec = ";".join(arm.label for arm in candidates)  # a label parses back to its arm
    calibration_task = write_items(out / "calibration-items.jsonl", calibration_items)
    confirmation_task = write_items(out / "confirmation-items.jsonl", confirmation_items)
    print(f"calibrating {len(candidates)} candidates on {len(calibration_items)} items at concurrency "
          f"{args.concurrency}", file=sys.stderr)
    status = sweep.main([*shared_flags(args, url, token, calibration_task, len(calibration_items)),
                         "--policies", spec, "--out", str(out / "sweep")], bound=loss_bound(args.max_loss, args.margin),
                        restore=False)
    if status != 0:
        print(f"lynx-sglang calibrate: the calibration sweep stopped (exit {status}); see {out / 'sweep'}",
              file=sys.stderr)
        return status
    sweep_results = json.loads((out / "sweep" / "results.json").read_text())
    warning = baseline_warning(sweep_results)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    choice = choose(sweep_results, levels, args.max_loss, args.margin)
    config = config_for(choice)
    if config["policy"] != "baseline" and scope:
        config.update(scope)
        print(f"the server has {describe_scope(scope)}: the candidates ran with it, so the config carries it",
              file=sys.stderr)
    config_path = out / "lynx-config.yaml"
    config_path.write_text(config_yaml(config, [
        f"lynx-sglang calibrate: {args.task}, {len(calibration_items)} calibration items, concurrency {args.concurrency},",
        f"max loss {args.max_loss:g} points (margin {args.margin:g}); evidence in report.md.", *serve_with(args)]))
    print(f"chosen: {config}; written to {config_path}", file=sys.stderr)
    confirmation = None
    if config["policy"] != "baseline":
        print(f"confirming on {len(confirmation_items)} held-out items", file=sys.stderr)
        status = ab.main([*shared_flags(args, url, token, confirmation_task, len(confirmation_items)),
                          "--a", "baseline", "--b-config", str(config_path), "--out", str(out / "confirm")],
                         bound=LossBound(args.max_loss, "the calibration's max loss"), restore=False)
        if status != 0:
            print(f"lynx-sglang calibrate: the confirmation stopped (exit {status}); see {out / 'confirm'}",
                  file=sys.stderr)
            return status
        confirmation = json.loads((out / "confirm" / "results.json").read_text())
    publish(args, out, config, choice, sweep_results, confirmation, time.monotonic() - started, warning)
    return 0
