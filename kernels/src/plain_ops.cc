// Baseline x86-64 (SSE2) versions: bias + activation and float16 conversion. The plain level has no packed GEMM;
// its experts run through OpenBLAS (which dispatches its own kernels by cpuid).
#include <cmath>
#include <cstring>

#include "packed.h"

namespace moefy {
namespace plain {
namespace {

inline float exp_approx(float x) {
  // e^x for x in [-87, 88]: Cody-Waite range reduction + degree-6 polynomial; relative error ~2e-7 (the same
  // polynomial as the vector versions).
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693145751953125f;
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

void bias_act(float* h, const float* b, int64_t n, Activation act) {
  switch (act) {
    case Activation::Relu:
      for (int64_t i = 0; i < n; ++i) {
        const float v = h[i] + b[i];
        h[i] = v > 0.0f ? v : 0.0f;
      }
      break;
    case Activation::GeluTanh:
      // 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
      for (int64_t i = 0; i < n; ++i) {
        const float x = h[i] + b[i];
        const float u2 = 1.5957691216057308f * (x + 0.044715f * x * x * x);
        h[i] = x / (1.0f + exp_approx(-u2));
      }
      break;
    case Activation::Gelu:
      // 0.5 x (1 + erf(x / sqrt 2)); erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
      for (int64_t i = 0; i < n; ++i) {
        const float x = h[i] + b[i];
        const float z = std::fabs(x) * 0.7071067811865476f;
        const float t = 1.0f / (1.0f + 0.3275911f * z);
        float p = 1.061405429f;
        p = p * t - 1.453152027f;
        p = p * t + 1.421413741f;
        p = p * t - 0.284496736f;
        p = p * t + 0.254829592f;
        const float e = 1.0f - p * t * exp_approx(-z * z);
        const float erf = x < 0.0f ? -e : e;
        h[i] = 0.5f * x * (1.0f + erf);
      }
      break;
  }
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man) {  // subnormal: normalise
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while (!(man & 0x400u));
    bits = sign | static_cast<uint32_t>(112 - e) << 23 | ((man & 0x3ffu) << 13);
  } else {
    bits = sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t float_to_half_bits(float f) {
  // Round to nearest even, as F16C's vcvtps2ph with rounding mode 0.
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (ax < 0x38800000u) {                                                // subnormal or zero in half
    if (ax < 0x33000000u) return sign;                                   // below half the smallest subnormal
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

void half_to_float(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}
void float_to_half(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half_bits(src[i]);
}

const PackedOps kOps = {"plain", 0, nullptr, nullptr, nullptr, nullptr, bias_act, half_to_float, float_to_half};

}  // namespace

const PackedOps* ops() { return &kOps; }

}  // namespace plain
}  // namespace moefy
