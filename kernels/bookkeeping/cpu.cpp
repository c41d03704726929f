// The serving runtime's bookkeeping after a decision, for one MoE layer call on a CPU (as the Triton
// launch does on CUDA): checks, final routing, active mask and one row of statistics.
//
// lynx_generated.h is written by bookkeeping/cpu.py from the Python definitions: struct LayerArgs, the
// statistics table's columns (LYNX_STAT_*, from bookkeeping/layout.py) and LYNX_MAX_TOP_K.
#include "lynx_generated.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

namespace {

constexpr int kMaxTopK = LYNX_MAX_TOP_K;
constexpr int kMaxExperts = 1024;  // the stack buffers' size

inline int64_t layer_id_at(const LayerArgs& a, const void* ids, int64_t stride, int64_t t, int64_t j) {
  if (a.ids_are_int64) return static_cast<const int64_t*>(ids)[t * stride + j];
  return static_cast<const int32_t*>(ids)[t * stride + j];
}

// Router probability of expert e in row t, as torch.softmax(...).nan_to_num(0): 0 for a row with a
// NaN, a +inf or only -inf.
struct RowSoftmax {
  double max = 0.0, total = 0.0;
  bool zero = false;
  RowSoftmax(const float* x, int64_t E) {
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < E; ++e) {
      if (std::isnan(x[e])) zero = true;
      top = std::max(top, x[e]);
    }
    zero = zero || !std::isfinite(top);
    if (zero) return;
    max = top;
    for (int64_t e = 0; e < E; ++e) total += std::exp(static_cast<double>(x[e]) - max);
  }
  double at(const float* x, int64_t e) const { return zero ? 0.0 : std::exp(static_cast<double>(x[e]) - max) / total; }
};

}  // namespace

// Checks, final routing, active mask and statistics of one layer call: the semantics of the torch
// reference (bookkeeping/reference.py: finalize_torch, record_torch).
extern "C" int lynx_layer_cpu(const LayerArgs* args) {
  const LayerArgs& a = *args;
  const int64_t T = a.num_rows, E = a.num_experts, K = a.top_k;
  if (E < 1 || E > kMaxExperts || K < 1 || K > kMaxTopK) return 1;
  const int64_t real = std::min(std::max<int64_t>(a.num_real, 0), T);
  auto original = [&](int64_t t, int64_t j) { return layer_id_at(a, a.original_ids, a.original_ids_stride, t, j); };
  auto proposed = [&](int64_t t, int64_t j) { return layer_id_at(a, a.new_ids, a.new_ids_stride, t, j); };
  bool fell = a.given_fell != 0;
  if (a.check) {
    fell = false;
    for (int64_t t = 0; t < real && !fell; ++t) {
      for (int64_t j = 0; j < K && !fell; ++j) {
        const int64_t id = proposed(t, j);
        fell = id < 0 || id >= E || !std::isfinite(a.new_weights[t * a.new_weights_stride + j]);
      }
    }
  }
  auto final_id = [&](int64_t t, int64_t j) { return a.check && fell ? original(t, j) : proposed(t, j); };
  if (a.out_ids != nullptr) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < K; ++j) {
        const int64_t id = final_id(t, j);
        if (a.ids_are_int64) static_cast<int64_t*>(a.out_ids)[t * K + j] = id;
        else static_cast<int32_t*>(a.out_ids)[t * K + j] = static_cast<int32_t>(id);
        a.out_weights[t * K + j] = fell ? a.original_weights[t * a.original_weights_stride + j]
                                        : a.new_weights[t * a.new_weights_stride + j];
      }
    }
  }
  if (a.fell_back_out != nullptr) *a.fell_back_out = fell;
  auto clamped = [&](int64_t id) { return std::min(std::max<int64_t>(id, 0), E - 1); };
  uint8_t after[kMaxExperts] = {};
  if (a.mask_out != nullptr || (a.table_row != nullptr && !fell)) {
    for (int64_t t = 0; t < real; ++t)
      for (int64_t j = 0; j < K; ++j) after[clamped(final_id(t, j))] = 1;
  }
  if (a.mask_out != nullptr) std::copy(after, after + E, a.mask_out);
  if (a.table_row == nullptr) return 0;
  if (!fell) {  // every figure but the fallbacks counts only for a layer call that kept its decision
    uint8_t before[kMaxExperts] = {};
    int64_t rerouted = 0;
    double dropped = 0.0;
    for (int64_t t = 0; t < real; ++t) {
      const float* x = a.logits + t * a.logits_stride;
      std::optional<RowSoftmax> probs;  // only for a row that lost an expert
      bool lost = false;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t id = original(t, j);
        before[clamped(id)] = 1;
        bool kept = false;
        for (int64_t i = 0; i < K && !kept; ++i) kept = final_id(t, i) == id;
        if (kept) continue;
        lost = true;
        if (!probs) probs.emplace(x, E);
        dropped += probs->at(x, clamped(id));
      }
      rerouted += lost;
    }
    int64_t distinct_before = 0, distinct_after = 0;
    for (int64_t e = 0; e < E; ++e) distinct_before += before[e], distinct_after += after[e];
    a.table_row[LYNX_STAT_STEPS] += 1.0;
    a.table_row[LYNX_STAT_TOKENS] += static_cast<double>(real);
    a.table_row[LYNX_STAT_DISTINCT_BEFORE] += static_cast<double>(distinct_before);
    a.table_row[LYNX_STAT_DISTINCT_AFTER] += static_cast<double>(distinct_after);
    a.table_row[LYNX_STAT_REROUTED] += static_cast<double>(rerouted);
    a.table_row[LYNX_STAT_MASS_DROPPED] += dropped;
  }
  a.table_row[LYNX_STAT_FALLBACKS] += fell;
  if (fell) *a.step_fell_back = 1.0;
  return 0;
}
