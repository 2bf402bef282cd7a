// DynamicMoE's attributes (docs/dynamic-moe.md): reading and validation shared by the CPU
// kernel (kernels/src) and the CUDA registration (kernels/cuda/register_cuda.cc), and the scale-of-position rule.
// Header-only, so that nvcc and the host compiler build it alike.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "activation.h"
#include "ort_api.h"

namespace moefy {

struct MoeAttributes {
  int64_t num_experts = 0;
  Activation activation = Activation::Relu;
  std::vector<int64_t> patch_nums;   // side length per scale
  std::vector<float> threshold;      // per scale; zeros when the attribute is absent
  std::vector<int64_t> scale_start;  // token offset of each scale in the full sequence; [scales + 1]
  int64_t full_len() const { return scale_start.empty() ? 0 : scale_start.back(); }
  int64_t scales() const { return static_cast<int64_t>(patch_nums.size()); }
};

namespace detail {
inline bool drop(const OrtApi* api, OrtStatus* st) {
  if (st) api->ReleaseStatus(st);
  return st != nullptr;
}
inline bool attr_string(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  if (drop(api, api->KernelInfoGetAttribute_string(info, name, nullptr, &size))) return false;
  std::string s(size, '\0');
  if (size && drop(api, api->KernelInfoGetAttribute_string(info, name, &s[0], &size))) return false;
  while (!s.empty() && s.back() == '\0') s.pop_back();
  *out = s;
  return true;
}
template <class T, class Getter>
inline bool attr_array(const OrtApi* api, const OrtKernelInfo* info, const char* name, Getter get, std::vector<T>* out) {
  size_t size = 0;
  if (drop(api, (api->*get)(info, name, nullptr, &size))) return false;
  out->assign(size, T());
  if (size && drop(api, (api->*get)(info, name, out->data(), &size))) return false;
  out->resize(size);
  return true;
}
}  // namespace detail

// Reads and checks the attributes; returns "" or one line naming the problem, prefixed with `who` (the op name).
inline std::string read_attributes(const OrtApi* api, const OrtKernelInfo* info, const std::string& who,
                                   MoeAttributes* a) {
  if (detail::drop(api, api->KernelInfoGetAttribute_int64(info, "num_experts", &a->num_experts)))
    return who + ": attribute num_experts is required";
  if (a->num_experts < 1) return who + ": num_experts must be >= 1, got " + std::to_string(a->num_experts);
  std::string act;
  if (!detail::attr_string(api, info, "activation", &act) || act == "relu") a->activation = Activation::Relu;
  else if (act == "gelu_tanh") a->activation = Activation::GeluTanh;
  else if (act == "gelu") a->activation = Activation::Gelu;
  else return who + ": unknown activation \"" + act + "\" (relu, gelu_tanh, gelu)";
  if (!detail::attr_array<int64_t>(api, info, "patch_nums", &OrtApi::KernelInfoGetAttributeArray_int64, &a->patch_nums) ||
      a->patch_nums.empty())
    return who + ": attribute patch_nums (one side length per scale) is required";
  a->scale_start.assign(1, 0);
  for (int64_t p : a->patch_nums) {
    if (p < 1 || p > (int64_t(1) << 20)) return who + ": patch_nums entries must be in [1, 2^20], got " + std::to_string(p);
    a->scale_start.push_back(a->scale_start.back() + p * p);
  }
  if (!detail::attr_array<float>(api, info, "threshold", &OrtApi::KernelInfoGetAttributeArray_float, &a->threshold))
    a->threshold.assign(a->patch_nums.size(), 0.0f);
  if (a->threshold.size() != a->patch_nums.size())
    return who + ": attribute threshold has " + std::to_string(a->threshold.size()) + " values, patch_nums has " +
           std::to_string(a->patch_nums.size()) + " scales";
  return "";
}

// The scale-of-position rule: with scale_index (forced >= 0) every position is that scale; a sequence of the full
// length (sum of pn^2) is the scales in order; otherwise L must be pn^2 of exactly one scale (a KV-cached step).
// Writes the scale of each of the L positions; returns "" or the error.
inline std::string scale_of_positions(const MoeAttributes& a, int64_t L, int64_t forced, int32_t* out,
                                      const std::string& who) {
  const int64_t n = a.scales();
  if (forced >= 0) {
    if (forced >= n) return who + ": scale_index " + std::to_string(forced) + " out of range [0, " + std::to_string(n) + ")";
    for (int64_t l = 0; l < L; ++l) out[l] = static_cast<int32_t>(forced);
    return "";
  }
  if (L == a.full_len()) {
    for (int64_t s = 0; s < n; ++s)
      for (int64_t l = a.scale_start[s]; l < a.scale_start[s + 1]; ++l) out[l] = static_cast<int32_t>(s);
    return "";
  }
  int64_t found = -1, matches = 0;
  for (int64_t s = 0; s < n; ++s)
    if (a.patch_nums[s] * a.patch_nums[s] == L) {
      found = s;
      ++matches;
    }
  if (matches != 1) {
    std::string pn;
    for (int64_t p : a.patch_nums) pn += (pn.empty() ? "" : ",") + std::to_string(p);
    return who + ": cannot infer the scale of the tokens: L = " + std::to_string(L) +
           " is neither the full sequence (sum of pn^2 = " + std::to_string(a.full_len()) +
           ") nor pn^2 of exactly one scale (patch_nums " + pn + "); pass scale_index";
  }
  for (int64_t l = 0; l < L; ++l) out[l] = static_cast<int32_t>(found);
  return "";
}

}  // namespace moefy
