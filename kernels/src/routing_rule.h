// DynamicMoE's routing rules (attribute `routing`, docs/dynamic-moe.md "Routing"): which experts run for one token,
// given its E norms and the threshold t of its scale. The one C++ statement of the rule: the CPU kernel
// (routing.cc), the CUDA kernel's route_kernel and its CPU emulator call it. Header-only and free of library
// headers, so that nvcc builds it for the device and the host compiler for the host alike.
//
//   t <= 0 or NaN      every expert runs
//   relative           e runs iff norms[e] >= t * max_k norms[k]   (the product in float32)
//   absolute           e runs iff norms[e] >= t
//   topk               the k = clamp(E - floor(t * E), 1, E) largest run, ties at the k-th largest value too
//                      (e runs iff norms[e] >= the k-th largest norm; t * E in float32)
//   every rule         the argmax (the first largest norm; a NaN yields to any number) always runs
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MOEFY_HD __host__ __device__
#else
#define MOEFY_HD
#endif

namespace moefy {

// The attribute's values, in the order of the CUDA launcher's `routing` field.
enum RoutingRule : int { kRoutingRelative = 0, kRoutingAbsolute = 1, kRoutingTopk = 2 };

// A token's routing: every expert runs (all), or the argmax and the experts whose norm reaches cut.
struct TokenCut {
  float cut;
  int64_t argmax;
  bool all;
};

MOEFY_HD inline bool expert_runs(const TokenCut& c, int64_t e, float norm) {
  return c.all || e == c.argmax || norm >= c.cut;
}

// The experts top-k keeps at a threshold t > 0.
MOEFY_HD inline int64_t topk_count(float t, int64_t E) {
  const float f = floorf(t * static_cast<float>(E));  // not contracted: one product
  return f >= static_cast<float>(E) ? 1 : E - static_cast<int64_t>(f);
}

namespace detail {
// Order-preserving map of floats onto uint32 (NaN as -inf, -0 as +0), and back.
MOEFY_HD inline uint32_t order_key(float x) {
  if (x != x) x = -INFINITY;
  if (x == 0.0f) x = 0.0f;
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
MOEFY_HD inline float from_order_key(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}
}  // namespace detail

// The k-th largest of E norms (1 <= k <= E; NaN counted as -inf), once per token: up to 64 experts a quickselect
// over their order keys in a local array (about 3E comparisons); above, bisection over the key bits (32 passes over
// the norms, no scratch memory). The same code runs in a CUDA thread.
template <class Norm>
MOEFY_HD inline float kth_largest(int64_t E, int64_t k, const Norm& norm) {
  if (E <= 64) {
    uint32_t key[64];
    for (int64_t e = 0; e < E; ++e) key[e] = detail::order_key(norm(e));
    int64_t lo = 0, hi = E - 1;
    const int64_t want = k - 1;  // position in descending order
    while (lo < hi) {
      const uint32_t pivot = key[lo + (hi - lo) / 2];
      int64_t i = lo, j = hi;
      while (i <= j) {  // Hoare partition, descending: [lo, j] >= pivot >= [i, hi]
        while (key[i] > pivot) ++i;
        while (key[j] < pivot) --j;
        if (i <= j) {
          const uint32_t x = key[i];
          key[i++] = key[j];
          key[j--] = x;
        }
      }
      if (want <= j) hi = j;
      else if (want >= i) lo = i;
      else break;  // between j and i every key is the pivot
    }
    return detail::from_order_key(key[want]);
  }
  uint32_t lo = 0, hi = 0xffffffffu;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2 + 1;
    int64_t n = 0;
    for (int64_t e = 0; e < E; ++e) n += detail::order_key(norm(e)) >= mid;
    if (n >= k) lo = mid;
    else hi = mid - 1;
  }
  return detail::from_order_key(lo);
}

// The routing of one token: norm(e) gives its e-th norm as a float (E >= 1), t its scale's threshold.
template <class Norm>
MOEFY_HD inline TokenCut token_cut(int rule, float t, int64_t E, const Norm& norm) {
  TokenCut c;
  float m = norm(0);
  c.argmax = 0;
  for (int64_t e = 1; e < E; ++e) {
    const float v = norm(e);
    if (v > m || (m != m && v == v)) {  // the first non-NaN maximum
      m = v;
      c.argmax = e;
    }
  }
  c.all = !(t > 0.0f);
  if (c.all) c.cut = -INFINITY;
  else if (rule == kRoutingAbsolute) c.cut = t;
  else if (rule == kRoutingTopk) c.cut = kth_largest(E, topk_count(t, E), norm);
  else c.cut = t * m;
  return c;
}

}  // namespace moefy
