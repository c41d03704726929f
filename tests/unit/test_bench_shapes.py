"""`lynx-sglang bench serve`'s pure parts: --shape parsing, fitting a named shape's layers into a
device's memory, the servers an --arms / --kernels pair starts, and baseline's expert figures
borrowed from the pruned arms."""

import json

import pytest

from lynx_sglang.tools.bench.models import DEFAULT_SHAPE_FIELDS, BenchError, Device, memory_flags, resolve_model
from lynx_sglang.tools.bench.serve import build_parser, check_arms_for_model, kv_token_flags, parse_arms, server_runs
from lynx_sglang.tools.bench.report import Result, compute_summary, expert_figures, percentile, ratios
from lynx_sglang.tiny_checkpoints import NAMED_SHAPES, ShapeError, fit_layers, kv_bytes_per_token, parse_shape
from lynx_sglang.tiny_checkpoints import weight_bytes

GIB = 2**30


def test_named_shape_alone():
    assert parse_shape("mixtral-8x7b", DEFAULT_SHAPE_FIELDS) == ("mixtral-8x7b", {})


def test_named_shape_with_overrides_typed_as_its_fields():
    name, overrides = parse_shape("qwen3-30b-a3b,num_hidden_layers=4,norm_topk_prob=false,rope_theta=1e4",
                                  DEFAULT_SHAPE_FIELDS)  # fmt: skip
    assert name == "qwen3-30b-a3b"
    assert overrides == {"num_hidden_layers": 4, "norm_topk_prob": False, "rope_theta": 10000.0}
    assert type(overrides["num_hidden_layers"]) is int


def test_overrides_alone_resize_the_default_shape():
    assert parse_shape("hidden_size=1024,num_hidden_layers=6", DEFAULT_SHAPE_FIELDS) == (
        None, {"hidden_size": 1024, "num_hidden_layers": 6})
    assert parse_shape("", DEFAULT_SHAPE_FIELDS) == (None, {})


@pytest.mark.parametrize("text,needles", [
    ("mixtral-8x22b", ["unknown shape 'mixtral-8x22b'", "mixtral-8x7b, qwen3-30b-a3b"]),
    ("mixtral-8x7b,num_experts=4", ["unknown field 'num_experts'", "num_local_experts"]),
    ("hidden_size=1024,mixtral-8x7b", ["'mixtral-8x7b' is not KEY=VALUE"]),
    ("mixtral-8x7b,hidden_size=1.5", ["hidden_size='1.5' is not an integer"]),
    ("mixtral-8x7b,num_hidden_layers=0", ["num_hidden_layers='0' must be positive"]),
    ("qwen3-30b-a3b,norm_topk_prob=yes", ["norm_topk_prob='yes'", "true or false"]),
    ("mixtral-8x7b,model_type=qwen3_moe", ["unknown field 'model_type'"]),
])  # fmt: skip
def test_bad_shapes_name_the_problem(text, needles):
    with pytest.raises(ShapeError) as error:
        parse_shape(text, DEFAULT_SHAPE_FIELDS)
    assert str(error.value).startswith("--shape: ")
    for needle in needles:
        assert needle in str(error.value)


def test_named_shapes_have_the_public_models_sizes():
    # GLM-4.5-Air: 106 B without its multi-token-prediction layer; its dense first layer counts as MoE here
    for name, billions, tolerance in (("mixtral-8x7b", 46.7, 0.1), ("qwen3-30b-a3b", 30.5, 0.1),
                                      ("glm-4.5-air", 106, 4), ("llama-4-scout", 108, 2)):
        fields = NAMED_SHAPES[name]
        outside, per_layer = weight_bytes(fields)
        params = (outside + per_layer * fields["num_hidden_layers"]) / 2 / 1e9
        assert params == pytest.approx(billions, abs=tolerance)


def test_the_llama4_shape_builds_a_text_config(tmp_path):
    from transformers import AutoConfig

    from lynx_sglang.tiny_checkpoints import write_config_only

    _, overrides = parse_shape("llama-4-scout,num_hidden_layers=4", {})
    config = AutoConfig.from_pretrained(write_config_only({**NAMED_SHAPES["llama-4-scout"], **overrides}, tmp_path))
    assert (config.model_type, config.num_local_experts, config.num_experts_per_tok) == ("llama4_text", 16, 1)


def test_the_glm_shape_builds_a_config_sglang_reads_as_a_biased_router(tmp_path):
    from transformers import AutoConfig

    from lynx_sglang.tiny_checkpoints import write_config_only

    _, overrides = parse_shape("glm-4.5-air,num_hidden_layers=4", {})
    folder = write_config_only({**NAMED_SHAPES["glm-4.5-air"], **overrides}, tmp_path / "glm")
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.n_routed_experts, config.n_shared_experts) == (
        "glm4_moe", 4, 128, 1)
    assert config.num_experts_per_tok == 8 and config.norm_topk_prob


def test_fit_layers_keeps_what_fits_and_cuts_what_does_not():
    mixtral = NAMED_SHAPES["mixtral-8x7b"]
    outside, per_layer = weight_bytes(mixtral)
    assert fit_layers(mixtral, 140 * GIB) == 32  # H200: 93 GB of weights fit with room to spare
    assert fit_layers(mixtral, 80 * GIB) == 24  # H100: 24 x 2.9 GB + embeddings <= 85 % of 80 GiB
    assert fit_layers(mixtral, 80 * GIB, static_fraction=0.5) == 14
    # c=64 x 388 tokens, x1.25: 4 KiB per token and layer; a layer less keeps it beside the weights
    assert fit_layers(mixtral, 78 * GIB, 0.85, kv_tokens=31040) == 23 < fit_layers(mixtral, 78 * GIB, 0.85) == 24
    assert kv_bytes_per_token(mixtral) == 2 * 8 * 128 * 2
    device = (outside + 5 * per_layer) / 0.85
    assert fit_layers(mixtral, device + 1) == 5 and fit_layers(mixtral, device - 1) == 4
    assert fit_layers(NAMED_SHAPES["qwen3-30b-a3b"], 80 * GIB) == 48
    with pytest.raises(ShapeError, match="not even one layer"):
        fit_layers(mixtral, 2 * GIB)


def test_one_server_per_arm_and_kernel_baseline_once():
    runs = server_runs(parse_arms("baseline;budget:fraction=0.5;lynx"), ["lynx", "sglang"])
    assert [(arm.spec, kernel) for arm, kernel in runs] == [
        ("baseline", "sglang"), ("budget:fraction=0.5", "lynx"), ("budget:fraction=0.5", "sglang"),
        ("lynx", "lynx"), ("lynx", "sglang")]
    baseline, pruned = runs[0][0], runs[2][0]
    assert baseline.serve_flags("sglang") == ["--lynx-policy", "baseline", "--lynx-stats", "off"]
    assert pruned.serve_flags("sglang") == ["--lynx-policy", "budget", "--lynx-budget", "fraction=0.5",
                                            "--lynx-kernel", "sglang"]


def test_a_named_shape_on_a_smaller_gpu_gets_the_layers_that_fit(tmp_path, capsys):
    h100 = Device("NVIDIA H100 80GB HBM3", 80 * GIB)
    model = resolve_model(None, "mixtral-8x7b", [], h100, tmp_path / "a", kv_tokens=64 * (128 + 256 + 4))
    config = json.loads((model.path / "config.json").read_text())
    assert (model.name, model.num_layers, config["num_hidden_layers"]) == ("mixtral-8x7b", 23, 23)
    assert model.serve_flags == ["--load-format", "dummy"] and not list(model.path.glob("*.safetensors"))
    assert memory_flags(model, h100, []) == ["--mem-fraction-static", "0.85"]  # what the layers were fitted to
    [line] = capsys.readouterr().out.splitlines()
    assert "23 of 32 layers fit with a KV cache of 24832 tokens" in line and "NVIDIA H100" in line
    # a fraction given after `--` is SGLang's and the fit's
    given = resolve_model(None, "mixtral-8x7b", ["--mem-fraction-static", "0.6"], h100, tmp_path / "d")
    assert given.num_layers == 17 and memory_flags(given, h100, ["--mem-fraction-static", "0.6"]) == []
    assert memory_flags(given, Device("CPU", None), []) == []
    with pytest.raises(BenchError, match="must be between 0 and 1"):
        resolve_model(None, "mixtral-8x7b", ["--mem-fraction-static", "1.5"], h100, tmp_path / "e")
    capsys.readouterr()
    # the user's layers stand; two tensor-parallel GPUs hold the whole model
    assert resolve_model(None, "mixtral-8x7b,num_hidden_layers=30", [], h100, tmp_path / "b").num_layers == 30
    assert resolve_model(None, "mixtral-8x7b", ["--tp", "2"], h100, tmp_path / "c").num_layers == 32
    assert capsys.readouterr().out == ""


def test_on_a_cpu_the_kv_cache_holds_the_highest_level():
    defaults = build_parser().parse_args([])
    assert kv_token_flags(defaults, [1, 16, 32, 64], on_gpu=False) == ["--max-total-tokens", str(64 * (128 + 256 + 4))]
    assert kv_token_flags(defaults, [1, 16, 32, 64], on_gpu=True) == []  # SGLang sizes it from GPU memory
    assert kv_token_flags(defaults, [4], on_gpu=False) == []  # within lynx-sglang serve's CPU default of 4096
    given = build_parser().parse_args(["--", "--max-total-tokens", "2048"])
    assert kv_token_flags(given, [64], on_gpu=False) == []


def result(arm, concurrency, before=None, after=None, tpot=(10.0, 20.0)):
    stats = None if before is None else {
        "distinct_experts_before": before[0], "expert_bytes_per_decode_token_before": before[1],
        "distinct_experts_after": after[0], "expert_bytes_per_decode_token_after": after[1],
    }  # fmt: skip
    return Result(arm, "sglang" if arm == "baseline" else "lynx", arm == "baseline", concurrency, 4, 40, 2.0,
                  list(tpot), stats)


def test_baseline_borrows_the_pruned_arms_before_figures_at_its_concurrency():
    results = [result("baseline", 1), result("baseline", 16, tpot=(20.0, 40.0)),
               result("lynx", 16, before=(6.0, 600.0), after=(3.0, 300.0)),
               result("budget:experts=2", 16, before=(8.0, 800.0), after=(2.0, 200.0))]  # fmt: skip
    assert expert_figures(results[0], results) == (None, None)  # no pruned arm ran at concurrency 1
    assert expert_figures(results[1], results) == (7.0, 700.0)
    assert expert_figures(results[2], results) == (3.0, 300.0)
    assert ratios(results[1], results) is None
    assert ratios(results[2], results) == {"tpot_median": 0.5, "tpot_p90": pytest.approx(0.5),
                                           "decode_tokens_per_s": 1.0, "expert_bytes_per_decode_token": 300 / 700}


def test_percentile_interpolates_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90) == pytest.approx(9.1)
    assert percentile([7.0], 90) == 7.0


@pytest.mark.parametrize("text, message", [
    ("num_experts_per_tok=9", "num_experts_per_tok=9 is more than the 8 experts of the default shape"),
    ("num_key_value_heads=3", "num_attention_heads=16 is not a multiple of num_key_value_heads=3"),
    ("glm-4.5-air,n_group=3", "128 experts do not split into n_group=3 equal groups"),
    ("glm-4.5-air,n_routed_experts=16,n_group=4,topk_group=1",
     "num_experts_per_tok=8 is more than the 4 experts its topk_group=1 of n_group=4 groups leave a token"),
])
def test_a_shape_no_model_could_have_is_refused_while_parsing(text, message):
    """They passed every check and failed later: a top-k above the experts as an arm's error."""
    with pytest.raises(ShapeError, match=message):
        parse_shape(text, DEFAULT_SHAPE_FIELDS)
    for name in NAMED_SHAPES:  # every named shape is one
        parse_shape(name, DEFAULT_SHAPE_FIELDS)


@pytest.mark.parametrize("shape", ["glm-4.5-air,num_hidden_layers=1", "glm-4.5-air,num_hidden_layers=3,first_k_dense_replace=5"])
def test_a_shape_without_moe_layers_is_refused_before_a_server_starts(shape, tmp_path):
    """It served baseline, then failed at the first pruned arm (HTTP 409, exit 1)."""
    with pytest.raises(BenchError, match=r"nothing to prune \(num_hidden_layers=\d, none with routed experts\)"):
        resolve_model(None, shape, [], Device("CPU", None), tmp_path,
                      check=lambda model_dir: check_arms_for_model(parse_arms("baseline;lynx"), model_dir))


def test_what_computed_the_pruned_steps_is_summarised_per_layer():
    assert compute_summary({}) is None
    assert compute_summary({"1": "lynx-triton", "2": "lynx-triton"}) == "lynx-triton"
    # a layer lynx's kernel cannot compute keeps SGLang's, whatever --lynx-kernel said
    assert compute_summary({"0": "sglang (expert biases)", "1": "sglang (expert biases)", "2": "lynx-cpu"}) == (
        "sglang (expert biases) on 2 layers; lynx-cpu on 1 layer")


def test_a_model_sglang_cannot_run_on_a_cpu_is_refused_there_before_a_server_starts(tmp_path):
    """Llama-4 on a CPU: every arm's server refused it in turn, each after its own start."""
    def check(on_cpu):
        return lambda model_dir: check_arms_for_model(parse_arms("baseline;lynx"), model_dir, on_cpu)

    with pytest.raises(BenchError, match=r"Llama4ForCausalLM cannot be served on a CPU: .*; run it on a GPU"):
        resolve_model(None, "llama-4-scout,num_hidden_layers=2", [], Device("CPU", None), tmp_path / "cpu",
                      check=check(True))
    model = resolve_model(None, "llama-4-scout,num_hidden_layers=2", [], Device("CPU", None), tmp_path / "gpu",
                          check=check(False))
    assert model.num_layers == 2
