"""What the stand-in `sgl_kernel` holds: the names it implements, the names SGLang 0.5.23 imports that it
only stubs (the serving path never calls them), and the submodules it leaves out on purpose.
tests/unit/test_gpu_runtime_standin.py reads every import of `sgl_kernel` in SGLang's source and fails
on a name that is in none of these lists, so a new SGLang cannot break the GPU path unseen."""

from __future__ import annotations

IMPLEMENTED = {
    "sgl_kernel": {"moe_align_block_size", "moe_sum_reduce"},
    "sgl_kernel.utils": {"is_arch_support_pdl"},
}

# Left out so that SGLang takes its own ImportError fallback.
ABSENT = {
    "sgl_kernel.scalar_type": "SGLang falls back to its own scalar types; stubs would break "
                              "compressed_tensors_wNa16 at import (it reads scalar_types.uint4)",
    "sgl_kernel.allreduce": "custom all-reduce is off without it (and unused on one GPU)",
    "sgl_kernel.flash_attn": "the fa3 attention backend is not used (--attention-backend triton)",
}

STUBS = {
    "sgl_kernel": """
    apply_token_bitmask_inplace_cuda assign_draft_cache_locs_contiguous_cpu
    assign_extend_cache_locs_cpu assign_req_to_token_pool_cpu awq_dequantize biased_topk
    build_draft_decode_metadata_cpu build_tree_kernel_efficient build_tree_kernel_efficient_cpu
    compress_norm_rope_store concat_mla_k copy_all_layer_kv_cache_cpu cutlass_w4a8_moe_mm
    dsv3_fused_a_gemm es_fp8_blockwise_scaled_grouped_mm es_sm100_mxfp8_blockscaled_grouped_mm
    es_sm100_mxfp8_blockscaled_grouped_quant fast_topk_transform_fused
    fast_topk_transform_ragged_fused fast_topk_v2 fill_accept_out_cache_loc_cpu
    fill_bonus_tokens_cpu flash_compress128_decode flash_compress128_prefill flash_compress4_decode
    flash_compress4_prefill flash_mla_decode flash_mla_decode_get_workspace_size
    flash_mla_get_workspace_size flash_mla_prefill flash_mla_prefill_get_workspace_size
    flash_mla_sparse_fwd flash_mla_with_kvcache fp8_blockwise_scaled_grouped_mm fp8_mqa_logits
    fp8_paged_mqa_logits fp8_paged_mqa_logits_triton fp8_scaled_mm fused_add_rmsnorm fused_experts
    fused_hc_head fused_inplace_qknorm_rope fused_k_norm_rope_flashmla
    fused_q_indexer_rope_hadamard_quant fused_q_norm_rope fused_qk_rope_with_cos_sin_cache_inplace
    gdn_attention gelu_and_mul gelu_quick gelu_tanh_and_mul gemma_fused_add_rmsnorm gemma_rmsnorm
    get_cutlass_w4a8_moe_mm_data hadamard_transform hash_topk hc_post hc_split_sinkhorn
    infllmv2_attn_stage1 int8_scaled_mm load_cache_to_device_buffer_dsv4_mla
    load_cache_to_device_buffer_mla max_pooling_1d_varlen merge_state_v2 metal mhc_fused_post_pre
    mhc_pre min_p_sampling_from_probs minimax_decode_topk moe_fused_gate moe_sum
    multimodal_rotary_embedding plan_compress_decode plan_compress_decode_legacy
    plan_compress_prefill plan_compress_prefill_legacy rmsnorm rotary_embedding rotate_input_ids_cpu
    sgl_per_tensor_quant_fp8 sgl_per_token_quant_fp8 shuffle_rows silu_and_mul silu_and_mul_clamp
    spatial store_cache_xpu top_k top_k_renorm_prob top_k_top_p_sampling_from_probs
    top_p_renorm_prob topk_sigmoid topk_softmax transfer_cache_dsv4_mla
    tree_speculative_sampling_target_only verify_tree_greedy verify_tree_greedy_cpu weak_ref_tensor
    """.split(),
    "sgl_kernel.elementwise": ["copy_to_gpu_no_ce"],
    "sgl_kernel.kvcacheio": """
    get_device_accessible_ptr transfer_embedding_ranges_direct transfer_kv_all_layer
    transfer_kv_all_layer_direct_lf_pf transfer_kv_all_layer_lf_pf transfer_kv_all_layer_lf_ph
    transfer_kv_all_layer_mla transfer_kv_all_layer_mla_lf_pf transfer_kv_direct
    transfer_kv_per_layer transfer_kv_per_layer_direct_pf_lf transfer_kv_per_layer_mla
    transfer_kv_per_layer_mla_pf_lf transfer_kv_per_layer_pf_lf transfer_kv_per_layer_ph_lf
    """.split(),
    "sgl_kernel.mamba": ["causal_conv1d_fn_cpu", "causal_conv1d_update_cpu", "chunk_gated_delta_rule_cpu"],
    "sgl_kernel.quantization": ["ggml_dequantize", "ggml_moe_a8", "ggml_moe_a8_vec", "ggml_mul_mat_a8",
                                "ggml_mul_mat_vec_a8"],
    "sgl_kernel.speculative": ["reconstruct_indices_from_tree_mask"],
}


class MissingKernelError(RuntimeError):
    """A stubbed sgl_kernel function was called. Not a NotImplementedError: SGLang's fused-op dispatch
    catches that one and silently tries another path."""


def stub(qualified_name: str):
    module, _, name = qualified_name.rpartition(".")
    known = name in STUBS.get(module, ())

    def unavailable(*args, **kwargs):
        raise MissingKernelError(
            f"{qualified_name} is not available: sgl_kernel does not import on this machine and "
            f"lynx-sglang's GPU runtime has no replacement for it"
            + ("" if known else f" (SGLang asked for a name the stand-in does not list: add it to {__name__})")
        )

    unavailable.__name__ = name
    unavailable.__qualname__ = qualified_name
    return unavailable


def module_getattr(module: str):
    """A module-level __getattr__ that answers every public name of `module` with its stub."""

    def getattr_(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return stub(f"{module}.{name}")

    return getattr_
