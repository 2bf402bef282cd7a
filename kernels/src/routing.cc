#include "routing.h"

#include <algorithm>

namespace moefy {

int64_t route(const float* norms, int64_t N, int64_t L, int64_t E, RoutingRule rule, const float* threshold,
              const int32_t* scale_of_l, uint8_t* mask, int64_t* counts, int32_t* active) {
  std::fill(counts, counts + E, 0);
  int64_t total = 0;
  for (int64_t t = 0; t < N; ++t) {
    const float* nr = norms + t * E;
    // The rule is evaluated once per token; the loop over the experts compares against its cut.
    const TokenCut c = token_cut(rule, threshold[scale_of_l[t % L]], E, [nr](int64_t e) { return nr[e]; });
    uint8_t* mk = mask + t * E;
    int32_t cnt = 0;
    if (c.all) {
      std::fill(mk, mk + E, uint8_t(1));
      for (int64_t e = 0; e < E; ++e) ++counts[e];
      cnt = static_cast<int32_t>(E);
    } else {
      for (int64_t e = 0; e < E; ++e) {
        const uint8_t on = expert_runs(c, e, nr[e]);
        mk[e] = on;
        cnt += on;
        counts[e] += on;
      }
    }
    if (active) active[t] = cnt;
    total += cnt;
  }
  return total;
}

void build_token_lists(const uint8_t* mask, int64_t N, int64_t E, Workspace& ws, int64_t total_pairs) {
  ws.offsets.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t e = 0; e < E; ++e) ws.offsets[e + 1] = ws.offsets[e] + ws.counts[e];
  grow(ws.tokens, static_cast<size_t>(total_pairs));
  std::vector<int64_t>& cur = ws.counts;  // reused as the write cursor
  for (int64_t e = 0; e < E; ++e) cur[e] = ws.offsets[e];
  for (int64_t t = 0; t < N; ++t) {
    const uint8_t* mk = mask + t * E;
    for (int64_t e = 0; e < E; ++e)
      if (mk[e]) ws.tokens[cur[e]++] = t;
  }
}

int64_t group_count(const Kernel& k, int64_t N, int64_t D, int64_t E) {
  // One group per core: measured best on 2 cores (D 1024, S 128) from 128 to 2048 tokens with the single-pass
  // micro-kernels (two per core had been better below 1024 tokens with the old ones).
  int64_t G = std::min<int64_t>(E, std::min<int64_t>(16, k.groups));
  const int64_t acc_bytes = N * D * static_cast<int64_t>(sizeof(float));
  const int64_t cap = int64_t(512) << 20;  // extra accumulator memory
  return std::max<int64_t>(1, std::min<int64_t>(G, 1 + cap / std::max<int64_t>(acc_bytes, 1)));
}

}  // namespace moefy
