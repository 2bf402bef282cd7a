// Routing (docs/dynamic-moe.md): expert e runs for a token iff norms[e] >= threshold[scale] * max_k norms[k]; the
// argmax always runs. Then per-expert token lists (CSR) and the number of
// expert groups (moe_cpu.cc cuts the pair list into them).
#pragma once

#include "kernel.h"

namespace moefy {

// Fills mask [N, E] (1 = runs), counts [E] and, when active is non-null, active [N] (experts run per token);
// returns the number of (token, expert) pairs that run.
int64_t route(const float* norms, int64_t N, int64_t L, int64_t E, const float* threshold, const int32_t* scale_of_l,
              uint8_t* mask, int64_t* counts, int32_t* active);

// Token lists per expert, ascending: tokens[offsets[e] .. offsets[e+1]). counts is used as scratch.
void build_token_lists(const uint8_t* mask, int64_t N, int64_t E, Workspace& ws, int64_t total_pairs);

// The number of expert groups for N tokens (each costs a zeroed [N, D] accumulator and a pass over Y).
int64_t group_count(const Kernel& k, int64_t N, int64_t D, int64_t E);

}  // namespace moefy
