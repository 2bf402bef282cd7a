// AVX2 + FMA micro-kernels (compiled with -mavx2 -mfma -mf16c; only reached when cpuid says the CPU has them):
// the same packed path as AVX-512 with 16 ymm registers: a 6 x 16 tile (12 accumulators, 2 B vectors, 1 broadcast),
// panels of 16 columns. Includes nothing but intrinsics and <cstdint>/<cstring> (see packed_avx512.cc).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "packed.h"

namespace moefy {
namespace avx2 {
namespace {

constexpr int NR = 16;
constexpr int MR = 6;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename TB>
void pack_b(const TB* src, int64_t ld, int64_t K, int64_t c0, int64_t ncols, TB* dst) {
  const int64_t np = (ncols + NR - 1) / NR;
  for (int64_t p = 0; p < np; ++p) {
    const int64_t n = min64(NR, ncols - p * NR);
    TB* out = dst + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      const TB* row = src + k * ld + c0 + p * NR;
      std::memcpy(out + k * NR, row, sizeof(TB) * n);
      if (n < NR) std::memset(out + k * NR + n, 0, sizeof(TB) * (NR - n));
    }
  }
}

// Lane masks for maskload/maskstore: lanes [0, n) set.
inline __m256i lane_mask(int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

// 8 B values as float32: plain loads, or float16 panels converted (exactly, F16C) on the way in. Float16 B is always
// packed (zero past the matrix edge), so its edge loads need no mask.
inline __m256 load_b(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_b(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load_b_edge(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
inline __m256 load_b_edge(const uint16_t* p, __m256i) { return load_b(p); }

template <int M, typename TB>
inline void ukernel(int64_t K, const float* const* a, const TB* bp, int64_t ldb, float* const* c, int ncols,
                    bool accumulate, const TB* pf) {
  __m256 acc0[M], acc1[M];
  for (int r = 0; r < M; ++r) {
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  const float* ar[M];
  for (int r = 0; r < M; ++r) ar[r] = a[r];
  if (ncols == NR) {
    for (int64_t k = 0; k < K; ++k) {
      const __m256 b0 = load_b(bp + k * ldb);
      const __m256 b1 = load_b(bp + k * ldb + 8);
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(pf + k * ldb), _MM_HINT_T0);  // the next chunk, one line per row
      for (int r = 0; r < M; ++r) {
        const __m256 av = _mm256_broadcast_ss(ar[r] + k);
        acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
      }
    }
    for (int r = 0; r < M; ++r) {
      float* cr = c[r];
      if (accumulate) {
        acc0[r] = _mm256_add_ps(acc0[r], _mm256_loadu_ps(cr));
        acc1[r] = _mm256_add_ps(acc1[r], _mm256_loadu_ps(cr + 8));
      }
      _mm256_storeu_ps(cr, acc0[r]);
      _mm256_storeu_ps(cr + 8, acc1[r]);
    }
    return;
  }
  // Ragged edge: B may be a plain matrix (W2 read in place), so loads past ncols are masked.
  const __m256i m0 = lane_mask(ncols), m1 = lane_mask(ncols - 8);
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = load_b_edge(bp + k * ldb, m0);
    const __m256 b1 = load_b_edge(bp + k * ldb + 8, m1);
    for (int r = 0; r < M; ++r) {
      const __m256 av = _mm256_broadcast_ss(ar[r] + k);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
  }
  for (int r = 0; r < M; ++r) {
    float* cr = c[r];
    if (accumulate) {
      acc0[r] = _mm256_add_ps(acc0[r], _mm256_maskload_ps(cr, m0));
      acc1[r] = _mm256_add_ps(acc1[r], _mm256_maskload_ps(cr + 8, m1));
    }
    _mm256_maskstore_ps(cr, m0, acc0[r]);
    _mm256_maskstore_ps(cr + 8, m1, acc1[r]);
  }
}

template <typename TB>
inline void ukernel_dispatch(int M, int64_t K, const float* const* a, const TB* bp, int64_t ldb, float* const* c,
                             int ncols, bool accumulate, const TB* pf) {
  switch (M) {
    case 6: ukernel<6, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 5: ukernel<5, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 4: ukernel<4, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 3: ukernel<3, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 2: ukernel<2, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 1: ukernel<1, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    default: break;
  }
}

// Few rows (an expert's tokens, M <= MC): B streamed once, panel by panel in KC-row chunks, each chunk reused from
// L1 by every balanced block of rows while the next one is prefetched (as at AVX-512). More rows: block by block
// over all of B, which stays in L2.
template <typename TB>
void gemm_rows(int64_t M, int64_t K, int64_t ncols, const float* const* a, const TB* b, int64_t ldb,
               int64_t panel_stride, float* const* c, bool accumulate) {
  constexpr int64_t KC = 256;
  constexpr int64_t MC = 256;
  const int64_t np = (ncols + NR - 1) / NR;
  const float* ab[MR];
  float* cb[MR];
  if (M <= MC) {
    const int64_t nb = (M + MR - 1) / MR;
    for (int64_t p = 0; p < np; ++p) {
      const int n = static_cast<int>(min64(NR, ncols - p * NR));
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = min64(KC, K - k0);
        const TB* bc = b + p * panel_stride + k0 * ldb;
        const TB* next = k0 + KC < K ? bc + KC * ldb : p + 1 < np ? b + (p + 1) * panel_stride : nullptr;
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int64_t s0 = blk * M / nb, s1 = (blk + 1) * M / nb;
          for (int64_t r = 0; r < s1 - s0; ++r) {
            ab[r] = a[s0 + r] + k0;
            cb[r] = c[s0 + r] + p * NR;
          }
          ukernel_dispatch<TB>(static_cast<int>(s1 - s0), kc, ab, bc, ldb, cb, n, accumulate || k0 > 0, blk == 0 && n == NR ? next : nullptr);
        }
      }
    }
    return;
  }
  for (int64_t r0 = 0; r0 < M; r0 += MR) {
    const int m = static_cast<int>(min64(MR, M - r0));
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = min64(KC, K - k0);
      for (int r = 0; r < m; ++r) ab[r] = a[r0 + r] + k0;
      for (int64_t p = 0; p < np; ++p) {
        const int n = static_cast<int>(min64(NR, ncols - p * NR));
        for (int r = 0; r < m; ++r) cb[r] = c[r0 + r] + p * NR;
        ukernel_dispatch<TB>(m, kc, ab, b + p * panel_stride + k0 * ldb, ldb, cb, n, accumulate || k0 > 0, nullptr);
      }
    }
  }
}

// e^x, the polynomial of the AVX-512 and plain versions; 2^k built in the exponent bits (k in [-126, 127]).
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 act256(__m256 x, Activation act) {
  switch (act) {
    case Activation::Relu:
      return _mm256_max_ps(x, _mm256_setzero_ps());
    case Activation::GeluTanh: {
      const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
      const __m256 u2 = _mm256_mul_ps(_mm256_set1_ps(1.5957691216057308f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
      const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), u2));
      return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    }
    case Activation::Gelu: {
      const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
      const __m256 ax = _mm256_andnot_ps(sign, x);
      const __m256 z = _mm256_mul_ps(ax, _mm256_set1_ps(0.7071067811865476f));
      const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), z, _mm256_set1_ps(1.0f)));
      __m256 p = _mm256_set1_ps(1.061405429f);
      p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
      p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
      p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
      p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
      const __m256 ez = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z)));
      const __m256 e = _mm256_fnmadd_ps(_mm256_mul_ps(p, t), ez, _mm256_set1_ps(1.0f));
      const __m256 erf = _mm256_or_ps(e, _mm256_and_ps(sign, x));
      return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
    }
  }
  return x;
}

void bias_act(float* h, const float* b, int64_t n, Activation act) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(h + i, act256(_mm256_add_ps(_mm256_loadu_ps(h + i), _mm256_loadu_ps(b + i)), act));
  if (i < n) {
    const __m256i m = lane_mask(static_cast<int>(n - i));
    const __m256 v = _mm256_add_ps(_mm256_maskload_ps(h + i, m), _mm256_maskload_ps(b + i, m));
    _mm256_maskstore_ps(h + i, m, act256(v, act));
  }
}

void half_to_float(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    uint16_t t[8] = {0};
    std::memcpy(t, src + i, sizeof(uint16_t) * (n - i));
    _mm256_maskstore_ps(dst + i, lane_mask(static_cast<int>(n - i)),
                        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t))));
  }
}

void float_to_half(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  if (i < n) {
    uint16_t t[8];
    const __m256 v = _mm256_maskload_ps(src + i, lane_mask(static_cast<int>(n - i)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(t), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    std::memcpy(dst + i, t, sizeof(uint16_t) * (n - i));
  }
}

// float32 and float16 B through the same templates.
const PackedOps kOps = {"avx2", NR, pack_b<float>, gemm_rows<float>, pack_b<uint16_t>,
                         gemm_rows<uint16_t>, bias_act, half_to_float, float_to_half};

}  // namespace

const PackedOps* ops() { return &kOps; }

}  // namespace avx2
}  // namespace moefy
