// The fused routing decision on a CPU: the same rules as lynx_sglang.policies (the torch reference)
// and the Triton launches (routing/triton_*.py), in one pass over the rows, one over the experts, one
// remap pass. Exact by construction: floats are only compared, or produced by single IEEE operations
// (built with -ffp-contract=off); sums are integers. No torch headers: plain pointers, loaded with ctypes.
//
// lynx_generated.h is written by routing/cpu.py from the Python definitions: struct RouteArgs, the rule
// codes (LYNX_MODE_*, LYNX_KEEP_*), the fixed point (LYNX_MASS_BITS, LYNX_RATIO_BITS), LYNX_MAX_TOP_K.
#include "lynx_generated.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

// The row passes vectorise; on x86-64 they are also built for AVX2 and the CPU picks at load time
// (about 20% faster than the SSE2 baseline at T 256, E 128). Exact either way: the same IEEE
// operations, no fused multiply-add. kernels/cpu_library.py builds without it where the compiler refuses.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(LYNX_NO_TARGET_CLONES)
#define LYNX_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LYNX_VECTOR_CLONES
#endif

namespace {

enum Mode : int32_t {
  kLynx = LYNX_MODE_LYNX,
  kOwnTop = LYNX_MODE_OWN_TOP,
  kBudget = LYNX_MODE_BUDGET,
  kTopN = LYNX_MODE_TOPN,
  kCoverage = LYNX_MODE_COVERAGE,
  kGiven = LYNX_MODE_GIVEN,
  kAnchor = LYNX_MODE_ANCHOR,
};
enum KeepMode : int32_t {
  kKeepNone = LYNX_KEEP_NONE,
  kKeepDroppedCap = LYNX_KEEP_DROPPED_CAP,
  kKeepGiven = LYNX_KEEP_GIVEN,
};
constexpr int kMassBits = LYNX_MASS_BITS;
constexpr float kRatioScale = static_cast<float>(1ULL << LYNX_RATIO_BITS);
constexpr int kMaxTopK = LYNX_MAX_TOP_K;
constexpr int kMaxExperts = 1024;  // the stack buffers' size

struct Workspace {
  std::vector<int8_t> bins;            // [T, E] lynx bins
  std::vector<int32_t> own_ids;        // [T, k]
  std::vector<float> own_values;       // [T, k]
  std::vector<int64_t> own_weights;    // [T, k] fixed point, 0 for non-voters
  std::vector<uint8_t> voter, finite, keep;
  std::vector<int32_t> threshold, need;
  std::vector<int64_t> counts, mass, union_count;  // [E]
  std::vector<int32_t> bin_votes;  // [beta+1, E]: voters with the expert in bin -j
  std::vector<int32_t> above_threshold;  // [E] lynx: voters with the expert above their threshold bin
  std::vector<uint8_t> active, topped, candidate;  // candidate: active, less the row's own top-k
  std::vector<int32_t> order, rank, active_ids;
};

inline bool better(float va, int64_t ia, float vb, int64_t ib) { return va > vb || (va == vb && ia < ib); }

inline int64_t id_at(const RouteArgs& a, int64_t t, int64_t j) {
  if (a.ids_are_int64) return static_cast<const int64_t*>(a.topk_ids)[t * a.ids_stride + j];
  return static_cast<const int32_t*>(a.topk_ids)[t * a.ids_stride + j];
}

inline void set_id(const RouteArgs& a, int64_t t, int64_t j, int64_t value) {
  if (a.ids_are_int64) static_cast<int64_t*>(a.out_ids)[t * a.top_k + j] = value;
  else static_cast<int32_t*>(a.out_ids)[t * a.top_k + j] = static_cast<int32_t>(value);
}

inline int64_t clamp_id(int64_t id, int64_t num_experts) { return std::min(std::max<int64_t>(id, 0), num_experts - 1); }

// Insert (value, id) into a list sorted best first, keeping at most `capacity` entries. Ids arrive in
// ascending order, so an equal value never passes an earlier one (lower index first).
inline void insert_best(float* values, int32_t* ids, int64_t& size, int64_t capacity, float value, int32_t id) {
  if (size == capacity && !(value > values[size - 1])) return;
  int64_t pos = size < capacity ? size++ : capacity - 1;
  while (pos > 0 && value > values[pos - 1]) {
    values[pos] = values[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  values[pos] = value;
  ids[pos] = id;
}

// The same for ids in any order: equal values are ordered by id.
inline void insert_pair(float* values, int32_t* ids, int64_t& size, int64_t capacity, float value, int32_t id) {
  if (size == capacity && !better(value, id, values[size - 1], ids[size - 1])) return;
  int64_t pos = size < capacity ? size++ : capacity - 1;
  while (pos > 0 && better(value, id, values[pos - 1], ids[pos - 1])) {
    values[pos] = values[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  values[pos] = value;
  ids[pos] = id;
}

// A row's own top-k, best first (ties: lower index). The k-th best of 16 lane maxima bounds the k-th
// best value from below (K distinct experts reach it): the experts that reach it are gathered in
// index order, and the insertion runs on those few (about 10 at E 128, k 8), not on all E.
// Written for the vectoriser: the lane maxima stay in registers (a ternary, not std::max through
// memory), the bound is found by counting (no branches), and a 64-bit mask per 64 experts leads the
// gather to the candidates.
constexpr int64_t kLanes = 16;
inline void own_top(const float* row, int64_t E, int64_t K, float* values, int32_t* ids) {
  int64_t size = 0;
  if (K > kLanes || E < 4 * kLanes) {  // few experts: plain insertion is cheaper
    for (int64_t e = 0; e < E; ++e) insert_best(values, ids, size, K, row[e], static_cast<int32_t>(e));
    return;
  }
  float lane_max[kLanes];
  for (int64_t i = 0; i < kLanes; ++i) lane_max[i] = row[i];
  int64_t e = kLanes;
  for (; e + kLanes <= E; e += kLanes)
    for (int64_t i = 0; i < kLanes; ++i) lane_max[i] = lane_max[i] > row[e + i] ? lane_max[i] : row[e + i];
  for (; e < E; ++e) lane_max[e % kLanes] = std::max(lane_max[e % kLanes], row[e]);
  // The k-th best lane maximum: the largest one that K lanes reach.
  int32_t reaching[kLanes] = {};
  for (int64_t m = 0; m < kLanes; ++m)
    for (int64_t l = 0; l < kLanes; ++l) reaching[l] += lane_max[m] >= lane_max[l];
  float bound = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < kLanes; ++l) {
    const float here = reaching[l] >= K ? lane_max[l] : -std::numeric_limits<float>::infinity();
    bound = bound > here ? bound : here;
  }
  for (int64_t base = 0; base < E; base += 64) {
    uint64_t mask = 0;
    const int64_t width = std::min<int64_t>(64, E - base);
    for (int64_t i = 0; i < width; ++i) mask |= static_cast<uint64_t>(row[base + i] >= bound) << i;
    for (; mask != 0; mask &= mask - 1) {
      const int32_t c = static_cast<int32_t>(base + __builtin_ctzll(mask));
      insert_best(values, ids, size, K, row[c], c);
    }
  }
}

// The model's own top-k ids (`topk_ids`) are usually the row's top-k already: a router that takes
// the top k of its softmax picks the same set. Checking that costs one vectorisable pass over the
// row instead of a selection: K distinct given ids are a top-k iff no expert scores above the worst
// of them but given ones. That set is the row's own then, however the model split a tie at the
// boundary (keys.own_topk_indices). Returns false when it is not (a grouped or biased router, repeated
// or invalid ids): own_top decides then, ties by lower index.
inline bool own_top_from_ids(const RouteArgs& a, int64_t t, const float* row, float* values, int32_t* ids) {
  const int64_t E = a.num_experts, K = a.top_k;
  for (int64_t j = 0; j < K; ++j) {
    const int64_t id = id_at(a, t, j);
    if (id < 0 || id >= E) return false;
    ids[j] = static_cast<int32_t>(id);
    values[j] = row[id];
  }
  float worst_value = values[0];
  for (int64_t j = 1; j < K; ++j) worst_value = std::min(worst_value, values[j]);
  int32_t above = 0, given_above = 0;  // experts scoring above the worst given one: all given?
  for (int32_t e = 0; e < static_cast<int32_t>(E); ++e) above += row[e] > worst_value;
  for (int64_t j = 0; j < K; ++j) given_above += values[j] > worst_value;
  if (above != given_above) return false;
  for (int64_t j = 0; j < K; ++j)
    for (int64_t i = 0; i < j; ++i)
      if (ids[i] == ids[j]) return false;  // K distinct ids, all reaching: exactly that set
  for (int64_t j = 1; j < K; ++j) {  // best first, ties lower index: own_top's order
    const float value = values[j];
    const int32_t id = ids[j];
    int64_t pos = j;
    for (; pos > 0 && better(value, id, values[pos - 1], ids[pos - 1]); --pos) values[pos] = values[pos - 1], ids[pos] = ids[pos - 1];
    values[pos] = value, ids[pos] = id;
  }
  return true;
}

// A row of logits as the reference sees it: the input itself when all finite (the common case, no
// copy), else a copy in `buffer` with NaN/-inf -> -big and +inf -> +big. Returns (row, finite).
inline const float* clean_row(const RouteArgs& a, int64_t t, float* buffer, bool& finite) {
  const float* x = &a.logits[t * a.logits_stride];
  const int64_t E = a.num_experts;
  int32_t bad = 0;
  for (int64_t e = 0; e < E; ++e) bad |= !(std::fabs(x[e]) <= 3.4028234663852886e38f);  // NaN fails too
  finite = bad == 0;
  if (finite) return x;
  for (int64_t e = 0; e < E; ++e) buffer[e] = std::isnan(x[e]) ? -a.big : std::isinf(x[e]) ? std::copysign(a.big, x[e]) : x[e];
  return buffer;
}

// Per row: voter flag, own top-k with weights in fixed point, per-expert sums; lynx bins.
LYNX_VECTOR_CLONES void scan_rows(const RouteArgs& a, Workspace& w) {
  const int64_t T = a.num_rows, E = a.num_experts, K = a.top_k;
  float buffer[kMaxExperts];
  for (int64_t t = 0; t < T; ++t) {
    bool finite;
    const float* row = clean_row(a, t, buffer, finite);
    const bool voter = t < a.num_real && finite;
    w.voter[t] = voter;
    w.finite[t] = finite;
    float values[kMaxTopK];  // local: the selection then stays in registers (no aliasing with row)
    int32_t ids[kMaxTopK];
    // Every row is checked: where a tie at the boundary went the model's way, own_top would differ.
    if (!own_top_from_ids(a, t, row, values, ids)) own_top(row, E, K, values, ids);
    std::copy(values, values + K, &w.own_values[t * K]);
    std::copy(ids, ids + K, &w.own_ids[t * K]);
    // Renormalised top-k weights: fp32 exp (correctly rounded via double), exact 2**40 scaling.
    int64_t fixed[kMaxTopK], total = 0;
    for (int64_t j = 0; j < K; ++j) {  // the best expert's gap is 0: its ratio is 1, no exp call
      const float ratio = j == 0 ? 1.0f : static_cast<float>(std::exp(static_cast<double>(values[j] - values[0])));
      fixed[j] = static_cast<int64_t>(ratio * kRatioScale);
      total += fixed[j];
    }
    for (int64_t j = 0; j < K; ++j) {
      const int64_t units = voter ? (fixed[j] << kMassBits) / total : 0;
      w.own_weights[t * K + j] = units;
      if (!voter) continue;
      w.counts[ids[j]] += 1;
      w.mass[ids[j]] += units;
      if (j < a.floor_k) w.union_count[ids[j]] += 1;
    }
    if (a.mode != kLynx) continue;
    // Bins in a local int32 row (an int8 store may alias anything and would force reloads).
    int32_t bins[kMaxExperts];
    const float top = values[0], alpha = a.alpha, lowest = static_cast<float>(-a.beta);
    for (int64_t e = 0; e < E; ++e) {
      // ceil(alpha * gap) clamped to -beta; gap <= 0, so truncation is the ceiling (no libm call,
      // no branch: both compile to vector instructions).
      const float scaled = alpha * (row[e] - top);  // one fp32 product, as the reference
      bins[e] = static_cast<int32_t>(std::max(scaled, lowest));
    }
    // Per bin q = -j: how many of this row's experts, and (voters) which experts, per expert.
    int64_t in_bin[9];
    for (int32_t j = 0; j <= a.beta; ++j) {
      int32_t* votes = &w.bin_votes[j * E];
      int32_t count = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int32_t here = bins[e] == -j;
        count += here;
        votes[e] += voter ? here : 0;
      }
      in_bin[j] = count;
    }
    int32_t bin = 0;
    int64_t above = 0;
    while (above + in_bin[-bin] < K) above += in_bin[-bin], --bin;  // the bin holding the k-th expert
    w.threshold[t] = bin;
    w.need[t] = static_cast<int32_t>(K - above);
    std::copy(bins, bins + E, &w.bins[t * E]);
    if (!voter) continue;
    // int32, as the bins: an int64 sum here widened every compare (twice the instructions per row).
    int32_t* sure = w.above_threshold.data();
    for (int64_t e = 0; e < E; ++e) sure[e] += bins[e] > bin;
  }
  if (a.mode == kLynx)
    for (int64_t e = 0; e < E; ++e) w.union_count[e] += w.above_threshold[e];
}

// Experts sorted by `before(a, b)`; rank[e] = position of e. Every order here is by non-negative
// keys, descending, then a tie-break: experts whose keys are all zero (`unkeyed`) come after all
// others and tie among themselves, so they are placed in their tie-break order (`tie_order(i)`: the
// i-th expert in it) and only the rest are sorted. At small T that is a few experts, not all E.
template <class Unkeyed, class TieOrder, class Before>
void order_experts(int64_t E, std::vector<int32_t>& order, std::vector<int32_t>& rank, Unkeyed unkeyed,
                   TieOrder tie_order, Before before) {
  int64_t keyed = 0;
  for (int64_t i = 0; i < E; ++i)
    if (!unkeyed(tie_order(i))) order[keyed++] = tie_order(i);
  for (int64_t i = 0, next = keyed; i < E; ++i)
    if (unkeyed(tie_order(i))) order[next++] = tie_order(i);
  std::sort(order.begin(), order.begin() + keyed, before);
  for (int64_t r = 0; r < E; ++r) rank[order[r]] = static_cast<int32_t>(r);
}

inline int32_t by_index(int64_t i) { return static_cast<int32_t>(i); }

// anchor's greedy hitting set (policies/anchor.py, AnchorPolicy.hitting_set): repeatedly pick the
// expert acceptable to the most waiting rows (ties: more routed mass, then lower index), until no
// waiting row is left. Each row leaves the count of every expert it accepts once, when first served:
// O(T E) in all, where the torch loop does O(T E) per pick.
void hitting_set(const std::vector<uint8_t>& acceptable, std::vector<uint8_t>& waiting, const int64_t* mass,
                 int64_t T, int64_t E, uint8_t* active) {
  std::vector<int64_t> votes(E, 0);
  for (int64_t t = 0; t < T; ++t)
    if (waiting[t])
      for (int64_t e = 0; e < E; ++e) votes[e] += acceptable[t * E + e];
  std::fill(active, active + E, 0);
  for (int64_t pick = 0; pick < std::min(E, T); ++pick) {
    int64_t best = 0;
    for (int64_t e = 1; e < E; ++e)
      if (votes[e] > votes[best] || (votes[e] == votes[best] && mass[e] > mass[best])) best = e;
    if (votes[best] == 0) break;
    active[best] = 1;
    for (int64_t t = 0; t < T; ++t) {
      if (!waiting[t] || !acceptable[t * E + best]) continue;
      waiting[t] = 0;
      for (int64_t e = 0; e < E; ++e) votes[e] -= acceptable[t * E + e];
    }
  }
}

// anchor's decide (AnchorPolicy.decide): the hitting set of the voters' acceptable experts (within
// log_ratio of their top-1), unless it would not be smaller than the voters' own experts.
void decide_anchor(const RouteArgs& a, Workspace& w, int64_t voters) {
  const int64_t T = a.num_rows, E = a.num_experts, K = a.top_k;
  std::vector<uint8_t> acceptable(T * E, 0), waiting(T, 0);
  float buffer[kMaxExperts];
  for (int64_t t = 0; t < T; ++t) {
    bool finite;
    const float* row = clean_row(a, t, buffer, finite);
    const float top = w.own_values[t * K];
    for (int64_t e = 0; e < E; ++e) acceptable[t * E + e] = (row[e] - top) >= a.anchor_log_ratio;
    waiting[t] = w.voter[t] && w.own_weights[t * K] >= a.anchor_min_share_units;
  }
  std::vector<uint8_t> hitting(E, 0);
  hitting_set(acceptable, waiting, w.mass.data(), T, E, hitting.data());
  int64_t chosen = 0, own = 0;
  for (int64_t e = 0; e < E; ++e) chosen += hitting[e], own += w.counts[e] > 0;
  const int64_t filled = std::max(chosen, a.slots);
  const int64_t computed = a.anchor_fill_to_k ? filled : (voters >= 2 ? std::max<int64_t>(chosen, 1) : filled);
  for (int64_t e = 0; e < E; ++e) w.active[e] = computed >= own ? w.counts[e] > 0 : hitting[e];
}

void decide(const RouteArgs& a, Workspace& w) {
  const int64_t T = a.num_rows, E = a.num_experts, K = a.top_k;
  int64_t voters = 0, total_mass = 0;
  for (int64_t t = 0; t < T; ++t) voters += w.voter[t];
  for (int64_t e = 0; e < E; ++e) total_mass += w.mass[e];
  // Preference order: routed mass, then votes (descending), then lower index.
  std::vector<int32_t> preference(E), preference_rank(E);
  const auto unrouted = [&](int32_t e) { return w.mass[e] == 0 && w.counts[e] == 0; };
  order_experts(E, preference, preference_rank, unrouted, by_index, [&](int32_t x, int32_t y) {
    if (w.mass[x] != w.mass[y]) return w.mass[x] > w.mass[y];
    if (w.counts[x] != w.counts[y]) return w.counts[x] > w.counts[y];
    return x < y;
  });
  std::fill(w.active.begin(), w.active.end(), 0);
  if (a.mode == kLynx) {
    std::vector<int64_t> votes(E, 0);
    for (int64_t e = 0; e < E; ++e) {
      int64_t power = 1;
      for (int64_t j = a.beta; j >= 0; --j, power *= voters) votes[e] += w.bin_votes[j * E + e] * power;
    }
    const auto no_votes = [&](int32_t e) { return votes[e] == 0; };
    const auto ties = [&](int64_t i) { return a.tie_by_mass ? preference[i] : by_index(i); };
    order_experts(E, w.order, w.rank, no_votes, ties, [&](int32_t x, int32_t y) {
      if (votes[x] != votes[y]) return votes[x] > votes[y];
      return a.tie_by_mass ? preference_rank[x] < preference_rank[y] : x < y;
    });
    for (int64_t e = 0; e < E; ++e) w.active[e] = w.union_count[e] > 0;
    for (int64_t t = 0; t < T; ++t) {  // the first `need` threshold-bin experts in the batch's order
      if (!w.voter[t]) continue;
      const int8_t* bins = &w.bins[t * E];
      for (int64_t r = 0, left = w.need[t]; r < E && left > 0; ++r) {
        const int32_t e = w.order[r];
        if (bins[e] == w.threshold[t]) w.active[e] = 1, --left;
      }
    }
  } else if (a.mode == kOwnTop) {
    for (int64_t e = 0; e < E; ++e) w.active[e] = w.union_count[e] > 0;
  } else if (a.mode == kBudget) {
    for (int64_t e = 0; e < E; ++e) w.active[e] = preference_rank[e] < a.rule_n && w.counts[e] > 0;
  } else if (a.mode == kTopN) {
    order_experts(E, w.order, w.rank, unrouted, by_index, [&](int32_t x, int32_t y) {
      if (w.counts[x] != w.counts[y]) return w.counts[x] > w.counts[y];
      if (w.mass[x] != w.mass[y]) return w.mass[x] > w.mass[y];
      return x < y;
    });
    for (int64_t e = 0; e < E; ++e) w.active[e] = w.rank[e] < a.rule_n && w.counts[e] > 0;
  } else if (a.mode == kCoverage) {
    int64_t before = 0;
    for (int32_t e : preference) {
      w.active[e] = (before << kMassBits) < a.fraction_units * total_mass && w.mass[e] > 0;
      before += w.mass[e];
    }
  } else if (a.mode == kAnchor) {
    decide_anchor(a, w, voters);
  } else {
    for (int64_t e = 0; e < E; ++e) w.active[e] = a.given_active[e] != 0;
  }

  // Top-up to `slots` experts (or one): the most-voted inactive ones (ties: lower index).
  const bool anchor_unfilled = a.mode == kAnchor && !a.anchor_fill_to_k;
  const int64_t top_up_target = anchor_unfilled && voters >= 2 ? 1 : a.slots;
  int64_t active_count = std::count(w.active.begin(), w.active.end(), 1);
  if (active_count < top_up_target) {
    std::vector<int32_t> by_votes(E);
    std::iota(by_votes.begin(), by_votes.end(), 0);
    std::stable_sort(by_votes.begin(), by_votes.end(), [&](int32_t x, int32_t y) { return w.counts[x] > w.counts[y]; });
    for (int32_t e : by_votes) {
      if (active_count == top_up_target) break;
      if (!w.active[e]) w.active[e] = 1, ++active_count;
    }
  }
  // Kept rows: their experts join the set.
  w.topped = w.active;
  for (int64_t t = 0; t < T; ++t) {
    bool keep = false;
    if (a.keep_mode == kKeepDroppedCap && w.voter[t]) {
      int64_t dropped = 0;
      bool any = false;
      for (int64_t j = 0; j < K; ++j)
        if (!w.topped[w.own_ids[t * K + j]]) dropped += w.own_weights[t * K + j], any = true;
      keep = a.any_drop ? any : dropped > a.dropped_cap_units;
    } else if (a.keep_mode == kKeepGiven) {
      keep = w.voter[t] && a.given_keep[t];
    }
    w.keep[t] = keep;
    if (keep)
      for (int64_t j = 0; j < K; ++j) w.active[clamp_id(id_at(a, t, j), E)] = 1;
  }
  // Budget cap, in the preference order.
  if (a.has_budget) {
    const int64_t threshold = static_cast<int64_t>(std::floor(a.budget_mass_fraction * static_cast<float>(1 << kMassBits)));
    int64_t rank = 0, before = 0;
    for (int32_t e : preference) {
      if (!w.active[e]) continue;
      const bool covering = a.budget_mass_fraction >= 1.0f || (before << kMassBits) < threshold * total_mass;
      w.active[e] = rank == 0 || (rank < a.budget_max_experts && covering);
      ++rank;
      before += w.mass[e];
    }
  }
}

// Each real row re-takes its top-`slots` over the active set (remap._remap_clean).
LYNX_VECTOR_CLONES void remap(const RouteArgs& a, Workspace& w) {
  const int64_t T = a.num_rows, E = a.num_experts, K = a.top_k, S = a.slots;
  w.candidate = w.active;
  w.active_ids.clear();  // ascending: the fill below scans these, not all E
  for (int64_t e = 0; e < E; ++e)
    if (w.active[e]) w.active_ids.push_back(static_cast<int32_t>(e));
  for (int64_t t = 0; t < T; ++t) {
    bool all_active = true;
    for (int64_t j = 0; j < K; ++j) all_active = all_active && w.active[clamp_id(id_at(a, t, j), E)];
    const bool keep = t >= a.num_real || (all_active && (w.keep[t] || (S == K && w.finite[t])));
    if (keep) {
      for (int64_t j = 0; j < K; ++j) {
        set_id(a, t, j, id_at(a, t, j));
        a.out_weights[t * K + j] = a.topk_weights[t * a.weights_stride + j];
      }
      continue;
    }
    float values[kMaxTopK];
    int32_t ids[kMaxTopK];
    int64_t filled = 0;
    const int32_t* own = &w.own_ids[t * K];
    for (int64_t j = 0; j < K && filled < S; ++j)  // own experts still active lead, in their order
      if (w.active[own[j]]) values[filled] = w.own_values[t * K + j], ids[filled++] = own[j];
    if (filled < S) {  // then the best active experts outside the own top-k
      float buffer[kMaxExperts];
      bool finite;
      const float* row = clean_row(a, t, buffer, finite);
      for (int64_t j = 0; j < K; ++j) w.candidate[own[j]] = 0;
      int64_t extra = 0;
      for (const int32_t e : w.active_ids)
        if (w.candidate[e]) insert_best(values + filled, ids + filled, extra, S - filled, row[e], e);
      for (int64_t j = 0; j < K; ++j) w.candidate[own[j]] = w.active[own[j]];
      filled += extra;
    }
    float target = 1.0f;
    if (!a.renormalize) {
      target = 0.0f;
      for (int64_t j = 0; j < K; ++j) target += a.topk_weights[t * a.weights_stride + j];
      target = std::isfinite(target) ? std::max(target, 0.0f) : 1.0f;
    }
    float exps[kMaxTopK], total = 0.0f;
    for (int64_t j = 0; j < filled; ++j) total += exps[j] = std::exp(values[j] - values[0]);
    const int32_t first = filled > 0 ? ids[0] : 0;
    for (int64_t j = 0; j < K; ++j) {
      const bool used = j < filled;
      set_id(a, t, j, used ? ids[j] : first);
      a.out_weights[t * K + j] = used ? exps[j] / total * target : 0.0f;
    }
  }
}

}  // namespace

extern "C" int lynx_route_cpu(const RouteArgs* args) {
  const RouteArgs& a = *args;
  if (a.top_k > kMaxTopK || a.num_experts > kMaxExperts || a.beta > 8 || a.num_experts < a.top_k) return 1;
  static thread_local Workspace w;
  const int64_t T = a.num_rows, E = a.num_experts, K = a.top_k;
  w.bins.resize(a.mode == kLynx ? T * E : 0);
  w.own_ids.resize(T * K);
  w.own_values.resize(T * K);
  w.own_weights.resize(T * K);
  w.voter.assign(T, 0);
  w.finite.assign(T, 0);
  w.keep.assign(T, 0);
  w.threshold.resize(T);
  w.need.resize(T);
  w.counts.assign(E, 0);
  w.mass.assign(E, 0);
  w.union_count.assign(E, 0);
  w.bin_votes.assign(a.mode == kLynx ? E * (a.beta + 1) : 0, 0);
  w.above_threshold.assign(a.mode == kLynx ? E : 0, 0);
  w.active.assign(E, 0);
  w.order.resize(E);
  w.rank.resize(E);
  scan_rows(a, w);
  decide(a, w);
  remap(a, w);
  for (int64_t e = 0; e < E; ++e) a.active_out[e] = w.active[e];
  return 0;
}
