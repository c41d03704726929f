"""The SGLang hooks of the scheduler process, each a thin adapter onto the one `LynxRuntime`.

    forward_context(...)                  AROUND  publish the Step of every forward (eager and capture)
    ModelRunner._forward_raw              AROUND  count and time steps, feed the latency controller
    ModelRunner.load_model                AFTER   bind the runtime to the loaded MoE layers
    ForwardBatch.init_new                 AFTER   remember how many rows of a mixed batch are decode
    select_experts                        AROUND  apply the policy to the top-k of pruned steps
    UnquantizedFusedMoEMethod.create_weights  AROUND  with the expert cache: experts made in host memory
    loader.initialize_dummy_weights       AROUND  routers' correction biases zeroed (dummy_routing.py); with the
                                                  expert cache: their random values made on the device
    UnquantizedFusedMoEMethod.apply       AROUND  compute only the active experts (lynx kernels); the expert cache
    DecodeCudaGraphRunner.can_run_graph   AROUND  replay graphs only if they hold the current policy
    DecodeCudaGraphRunner.capture         AROUND  the target model's decode graphs are being captured
    DecodeCudaGraphRunner.load_batch      AFTER   the replayed graph's real rows (its padding does not vote)
    Scheduler.handle_rpc_request          AROUND  answer lynx control requests between steps (control_reply.py)
    Scheduler.on_idle                     AFTER   an idle scheduler: no step interval spans the gap
    Scheduler.expert_distribution_handle, .send_weights_to_remote_instance  AROUND  a bad call fails, the
                                                  server stays (control_requests.py)
"""

from __future__ import annotations

import logging

from lynx_sglang.config import CONTROL_RPC_METHOD, LynxConfig
from lynx_sglang.scheduler import control_requests
from lynx_sglang.scheduler.control_reply import answer_control_request
from lynx_sglang.scheduler.dummy_routing import zero_correction_biases
from lynx_sglang.scheduler.introspection import routed_rows
from lynx_sglang.scheduler.runtime import LynxRuntime
from lynx_sglang.scheduler.step import StepScope, current_step, step_for_batch

logger = logging.getLogger("lynx_sglang")

runtime: LynxRuntime | None = None


def register(register_hook, config: LynxConfig) -> None:
    """Create the process's runtime and register every scheduler hook with SGLang's HookRegistry."""
    global runtime
    runtime = LynxRuntime(config)
    model_runner = "sglang.srt.model_executor.model_runner.ModelRunner"
    register_hook("sglang.srt.model_executor.forward_context.forward_context", around_forward_context, "AROUND")
    register_hook(f"{model_runner}._forward_raw", around_forward_raw, "AROUND")
    register_hook(f"{model_runner}.load_model", after_load_model, "AFTER")
    register_hook("sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", after_forward_batch_init,
                  "AFTER")
    register_hook("sglang.srt.layers.moe.topk.select_experts", around_select_experts, "AROUND")
    register_hook("sglang.srt.layers.quantization.unquant.UnquantizedFusedMoEMethod.create_weights",
                  around_create_moe_weights, "AROUND")
    register_hook("sglang.srt.model_loader.loader.initialize_dummy_weights", around_dummy_weights, "AROUND")
    register_hook("sglang.srt.layers.quantization.unquant.UnquantizedFusedMoEMethod.apply", around_moe_apply,
                  "AROUND")
    graph_runner = "sglang.srt.model_executor.runner.decode_cuda_graph_runner.DecodeCudaGraphRunner"
    register_hook(f"{graph_runner}.can_run_graph", around_can_run_graph, "AROUND")
    register_hook(f"{graph_runner}.capture", around_decode_graph_capture, "AROUND")
    register_hook(f"{graph_runner}.load_batch", after_graph_load_batch, "AFTER")
    register_hook("sglang.srt.managers.scheduler.Scheduler.handle_rpc_request", around_handle_rpc_request,
                  "AROUND")
    register_hook("sglang.srt.managers.scheduler.Scheduler.on_idle", after_scheduler_idle, "AFTER")
    control_requests.register(register_hook)


def around_forward_context(original, ctx, *args, forward_batch=None, **kwargs):
    manager = original(ctx, *args, forward_batch=forward_batch, **kwargs)
    if forward_batch is None or runtime is None or not runtime.bound:
        return manager
    step, outer = step_for_batch(forward_batch, runtime.config.prune_mixed), current_step()
    if outer is not None and outer.mode == "mixed" and step.mode == "extend":
        step = outer  # SGLang's eager runner runs a mixed batch as an extend one (a copy): the same forward
    return StepScope(manager, step)


def around_forward_raw(original, model_runner, forward_batch, *args, **kwargs):
    if runtime is None or not runtime.bound or getattr(model_runner, "is_draft_worker", False):
        return original(model_runner, forward_batch, *args, **kwargs)
    step = step_for_batch(forward_batch, runtime.config.prune_mixed)
    runtime.begin_step(step)
    output = None
    try:
        output = original(model_runner, forward_batch, *args, **kwargs)
        return output
    finally:
        runtime.end_step(step, routed_rows(model_runner, step, output))


def after_load_model(result, model_runner, *args, **kwargs):
    if runtime is not None:
        runtime.bind(model_runner)
    return result


def after_scheduler_idle(result, *args, **kwargs):
    if runtime is not None:
        runtime.timer.idle()
    return result


def after_forward_batch_init(forward_batch, *args, **kwargs):
    # init_new(batch, model_runner): a mixed batch's decode requests follow its prefill requests.
    batch = next((a for a in args if hasattr(a, "decoding_reqs")), kwargs.get("batch"))
    decoding = getattr(batch, "decoding_reqs", None)
    if decoding and forward_batch.forward_mode.is_mixed():
        forward_batch.lynx_decode_rows = len(decoding)
    return forward_batch


def around_select_experts(original, hidden_states, router_logits, topk_config, *args, **kwargs):
    output = original(hidden_states, router_logits, topk_config, *args, **kwargs)
    step = current_step()
    if step is None or not step.prune or runtime is None:
        return output
    return runtime.route(
        output, router_logits, topk_config, kwargs.get("layer_id"), kwargs.get("num_token_non_padded"),
        kwargs.get("expert_location_dispatch_info"), step,
    )  # fmt: skip


def around_decode_graph_capture(original, graph_runner, *args, **kwargs):
    # The target model's decode graphs only: a draft model's (EAGLE's runner subclasses this one) never
    # loads a batch through load_batch, so graph_rows would be another batch's count.
    target = runtime is not None and runtime.bound and not getattr(graph_runner.model_runner, "is_draft_worker", False)
    if target:
        runtime.capturing_decode_graphs = True
    try:
        return original(graph_runner, *args, **kwargs)
    finally:
        if target:
            runtime.capturing_decode_graphs = False


def after_graph_load_batch(result, graph_runner, *args, **kwargs):
    # A decode graph is about to replay: its real rows go where the captured routing reads them.
    rows = getattr(graph_runner, "raw_num_token", None)
    if runtime is not None and runtime.bound and rows is not None:
        if not getattr(graph_runner.model_runner, "is_draft_worker", False):
            runtime.load_graph_rows(rows)
    return result


def around_create_moe_weights(original, method, layer, *args, **kwargs):
    if runtime is None:
        return original(method, layer, *args, **kwargs)
    return runtime.caches.create_on_host(original, method, layer, *args, **kwargs)


def around_dummy_weights(original, model, *args, **kwargs):
    if runtime is None:
        return original(model, *args, **kwargs)
    result = runtime.caches.fill_dummy_weights(original, model, *args, **kwargs)
    zeroed = zero_correction_biases(model)
    if zeroed:
        logger.info("dummy weights: the correction bias of %d routers zeroed, so the tokens choose their experts "
                    "(SGLang's random bias would send every token to the same ones)", zeroed)
    return result


def around_moe_apply(original, method, layer=None, dispatch_output=None, *args, **kwargs):
    step = current_step()
    if runtime is not None and runtime.caches.holds(layer):  # offloaded experts: every forward, any mode
        return runtime.compute_experts(step, layer, method, dispatch_output, None)
    if runtime is None or step is None or not step.prune:
        return original(method, layer, dispatch_output, *args, **kwargs)
    return runtime.compute_experts(step, layer, method, dispatch_output,
                                   lambda dispatched: original(method, layer, dispatched, *args, **kwargs))


def around_can_run_graph(original, graph_runner, forward_batch, *args, **kwargs):
    # Graphs captured with one policy must not replay another: after a switch, decode runs eagerly
    # (correct, slower) until the policy the graphs hold is switched back.
    if runtime is not None and runtime.bound and not runtime.graphs_hold_current_settings(forward_batch.batch_size):
        return False
    return original(graph_runner, forward_batch, *args, **kwargs)


def around_handle_rpc_request(original, scheduler, recv_req, *args, **kwargs):
    if getattr(recv_req, "method", None) != CONTROL_RPC_METHOD:
        return original(scheduler, recv_req, *args, **kwargs)
    return answer_control_request(runtime, scheduler, recv_req)
