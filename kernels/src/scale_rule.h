// The scale-of-position rule of DynamicMoE (docs/dynamic-moe.md "Scale of a token"), the one C++ statement of it:
// the CPU kernel (attributes.h), the CUDA launcher and its route_kernel call it. Header-only, no ONNX Runtime or
// CUDA headers, so that nvcc and the host compiler build it alike.
#pragma once

#include <stdint.h>

#include <string>

#include "routing_rule.h"  // MOEFY_HD

namespace moefy {

// How positions map to scales: every position is `scale` (scale_index, or one step of KV-cached generation), or
// (full) position l belongs to the scale whose token range holds it.
struct ScaleLayout {
  bool full = false;
  int64_t scale = 0;
};

// The rule for L positions over patch_nums [n]: with scale_index (forced >= 0) every position is that scale; a
// sequence of the full length (sum of pn^2) is the scales in order; otherwise L must be pn^2 of exactly one scale.
// Returns "" or one line naming the problem, prefixed with `who`.
inline std::string scale_layout(const int64_t* patch_nums, int64_t n, int64_t L, int64_t forced, const std::string& who,
                                ScaleLayout* out) {
  if (forced >= 0) {
    if (forced >= n) return who + ": scale_index " + std::to_string(forced) + " out of range [0, " + std::to_string(n) + ")";
    out->full = false;
    out->scale = forced;
    return "";
  }
  int64_t full_len = 0, found = -1, matches = 0;
  for (int64_t s = 0; s < n; ++s) {
    full_len += patch_nums[s] * patch_nums[s];
    if (patch_nums[s] * patch_nums[s] == L) {
      found = s;
      ++matches;
    }
  }
  if (L == full_len) {
    out->full = true;
    out->scale = 0;
    return "";
  }
  if (matches != 1) {
    std::string pn;
    for (int64_t s = 0; s < n; ++s) pn += (pn.empty() ? "" : ",") + std::to_string(patch_nums[s]);
    return who + ": cannot infer the scale of the tokens: L = " + std::to_string(L) +
           " is neither the full sequence (sum of pn^2 = " + std::to_string(full_len) +
           ") nor pn^2 of exactly one scale (patch_nums " + pn + "); pass scale_index";
  }
  out->full = false;
  out->scale = found;
  return "";
}

// The scale of position l of a full sequence, given the exclusive end position of each of the n scales.
template <class End>
MOEFY_HD inline int scale_of_position(int64_t l, const End* ends, int n) {
  int s = 0;
  while (s < n - 1 && l >= ends[s]) ++s;
  return s;
}

}  // namespace moefy
