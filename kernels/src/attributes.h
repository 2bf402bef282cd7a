// DynamicMoE's attributes (docs/dynamic-moe.md): reading and validation shared by the CPU kernel (kernels/src) and
// the CUDA registration (kernels/cuda/register_cuda.cc), and the scale of each position (scale_rule.h) for the CPU
// kernel. Header-only, so that nvcc and the host compiler build it alike.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "activation.h"
#include "ort_api.h"
#include "routing_rule.h"
#include "scale_rule.h"

namespace moefy {

struct MoeAttributes {
  int64_t num_experts = 0;
  Activation activation = Activation::Relu;
  RoutingRule routing = kRoutingRelative;
  std::vector<int64_t> patch_nums;   // side length per scale
  std::vector<float> threshold;      // per scale; zeros when the attribute is absent
  std::vector<int64_t> scale_start;  // token offset of each scale in the full sequence; [scales + 1]
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
  std::string routing;
  if (!detail::attr_string(api, info, "routing", &routing) || routing == "relative") a->routing = kRoutingRelative;
  else if (routing == "absolute") a->routing = kRoutingAbsolute;
  else if (routing == "topk") a->routing = kRoutingTopk;
  else return who + ": unknown routing \"" + routing + "\" (relative, absolute, topk)";
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

// The scale of each of the L positions (scale_rule.h); returns "" or the error.
inline std::string scale_of_positions(const MoeAttributes& a, int64_t L, int64_t forced, int32_t* out,
                                      const std::string& who) {
  ScaleLayout layout;
  std::string err = scale_layout(a.patch_nums.data(), a.scales(), L, forced, who, &layout);
  if (!err.empty()) return err;
  const int n = static_cast<int>(a.scales());
  for (int64_t l = 0; l < L; ++l)
    out[l] = layout.full ? scale_of_position(l, a.scale_start.data() + 1, n) : static_cast<int32_t>(layout.scale);
  return "";
}

}  // namespace moefy
