// AVX-512 micro-kernels (compiled with -mavx512f -mavx2 -mfma -mf16c; only reached when cpuid says the CPU has
// AVX-512F). 12 x 32 register tile, panels of 32 columns. Includes nothing but intrinsics and <cstdint>/<cstring>:
// an inline library function instantiated here would be AVX-512 code that the linker may pick for every caller.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "packed.h"

namespace moefy {
namespace avx512 {
namespace {

constexpr int NR = 32;
constexpr int MR = 12;

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

// 16 B values as float32: plain loads, or float16 panels converted (exactly) on the way in. Float16 B is always
// packed (zero past the matrix edge), so its edge loads need no mask.
inline __m512 load_b(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_b(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 load_b_edge(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_b_edge(const uint16_t* p, __mmask16) { return load_b(p); }

// C[r][0..ncols) (+)= sum_k A[r][k] * Bp[k][0..ncols) for r < M (M <= MR); A rows at a[r] + k, C rows at c[r].
template <int M, typename TB>
inline void ukernel(int64_t K, const float* const* a, const TB* bp, int64_t ldb, float* const* c, int ncols,
                    bool accumulate, const TB* pf) {
  const __mmask16 m0 = static_cast<__mmask16>(ncols >= 16 ? 0xFFFF : ((1u << ncols) - 1));
  const __mmask16 m1 = static_cast<__mmask16>(ncols >= 32 ? 0xFFFF : ncols <= 16 ? 0 : ((1u << (ncols - 16)) - 1));
  __m512 acc0[M], acc1[M];
  for (int r = 0; r < M; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  const float* ar[M];
  for (int r = 0; r < M; ++r) ar[r] = a[r];
  if (ncols == NR) {
    // Full panels: plain loads (with AVX-512F alone, masks in the loop spill k registers to the stack).
    for (int64_t k = 0; k < K; ++k) {
      const __m512 b0 = load_b(bp + k * ldb);
      const __m512 b1 = load_b(bp + k * ldb + 16);
      if (pf) {  // the next B chunk into L1 while this one is computed (measured 0.01–0.02 × dense better than to L2)
        _mm_prefetch(reinterpret_cast<const char*>(pf + k * ldb), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pf + k * ldb + 16), _MM_HINT_T0);
      }
      for (int r = 0; r < M; ++r) {
        const __m512 av = _mm512_set1_ps(ar[r][k]);
        acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
      }
    }
  } else {
    // Ragged edge: B may be a plain matrix (W2 read in place), so loads past ncols are masked.
    for (int64_t k = 0; k < K; ++k) {
      const __m512 b0 = load_b_edge(bp + k * ldb, m0);
      const __m512 b1 = load_b_edge(bp + k * ldb + 16, m1);
      for (int r = 0; r < M; ++r) {
        const __m512 av = _mm512_set1_ps(ar[r][k]);
        acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
      }
    }
  }
  if (ncols == NR) {
    for (int r = 0; r < M; ++r) {
      float* cr = c[r];
      if (accumulate) {
        acc0[r] = _mm512_add_ps(acc0[r], _mm512_loadu_ps(cr));
        acc1[r] = _mm512_add_ps(acc1[r], _mm512_loadu_ps(cr + 16));
      }
      _mm512_storeu_ps(cr, acc0[r]);
      _mm512_storeu_ps(cr + 16, acc1[r]);
    }
  } else {
    for (int r = 0; r < M; ++r) {
      float* cr = c[r];
      if (accumulate) {
        acc0[r] = _mm512_add_ps(acc0[r], _mm512_maskz_loadu_ps(m0, cr));
        acc1[r] = _mm512_add_ps(acc1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
      }
      _mm512_mask_storeu_ps(cr, m0, acc0[r]);
      _mm512_mask_storeu_ps(cr + 16, m1, acc1[r]);
    }
  }
}

template <typename TB>
inline void ukernel_dispatch(int M, int64_t K, const float* const* a, const TB* bp, int64_t ldb, float* const* c,
                             int ncols, bool accumulate, const TB* pf) {
  switch (M) {
    case 12: ukernel<12, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 11: ukernel<11, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 10: ukernel<10, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 9: ukernel<9, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 8: ukernel<8, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 7: ukernel<7, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 6: ukernel<6, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 5: ukernel<5, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 4: ukernel<4, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 3: ukernel<3, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 2: ukernel<2, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    case 1: ukernel<1, TB>(K, a, bp, ldb, c, ncols, accumulate, pf); break;
    default: break;
  }
}

// Few rows (the sparse case: an expert's tokens, M <= MC): B is streamed once, in memory order (panel by panel, KC
// rows at a time), each chunk reused from L1 by every block of rows, the next chunk prefetched meanwhile. More rows:
// block by block over all of B (B stays in L2, the block's A rows in L1 across the panels), which measured faster
// there. Rows are cut into balanced blocks (64 rows: 11 x 4 + 10 x 2, not 12 x 5 + 4). Measured on Zen 5 at D 1024,
// S 128 (kernels/README.md); a 6 x 64 tile without the prefetch measured slower at 256 tokens.
template <typename TB>
void gemm_rows(int64_t M, int64_t K, int64_t ncols, const float* const* a, const TB* b, int64_t ldb,
               int64_t panel_stride, float* const* c, bool accumulate) {
  constexpr int64_t MC = 256;
  // 256 rows of a 32-column panel: a 32 KB chunk (Zen 5's L1D is 48 KB). In the few-rows order, measured against
  // 128 (twice the C round trips through the accumulators): 0.01–0.03 × dense better at 256 tokens; 512 no better.
  constexpr int64_t KC = 256;
  const int64_t np = (ncols + NR - 1) / NR;
  const int64_t nb = (M + MR - 1) / MR;
  const float* ab[MR];
  float* cb[MR];
  auto rows = [&](int64_t blk, int64_t k0, int64_t p) {
    const int64_t s0 = blk * M / nb, s1 = (blk + 1) * M / nb;
    for (int64_t r = 0; r < s1 - s0; ++r) {
      ab[r] = a[s0 + r] + k0;
      cb[r] = c[s0 + r] + p * NR;
    }
    return static_cast<int>(s1 - s0);
  };
  if (M <= MC) {
    for (int64_t p = 0; p < np; ++p) {
      const int n = static_cast<int>(min64(NR, ncols - p * NR));
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = min64(KC, K - k0);
        const TB* bc = b + p * panel_stride + k0 * ldb;
        // The chunk after this one (next KC rows of the panel, or the next panel's first) is prefetched meanwhile.
        const TB* next = k0 + KC < K ? bc + KC * ldb : p + 1 < np ? b + (p + 1) * panel_stride : nullptr;
        for (int64_t blk = 0; blk < nb; ++blk) {
          const int m = rows(blk, k0, p);
          ukernel_dispatch<TB>(m, kc, ab, bc, ldb, cb, n, accumulate || k0 > 0, blk == 0 ? next : nullptr);
        }
      }
    }
    return;
  }
  for (int64_t blk = 0; blk < nb; ++blk)
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = min64(KC, K - k0);
      for (int64_t p = 0; p < np; ++p) {
        const int n = static_cast<int>(min64(NR, ncols - p * NR));
        const int m = rows(blk, k0, p);
        ukernel_dispatch<TB>(m, kc, ab, b + p * panel_stride + k0 * ldb, ldb, cb, n, accumulate || k0 > 0, nullptr);
      }
    }
}

inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

inline __m512 act512(__m512 x, Activation act) {
  switch (act) {
    case Activation::Relu:
      return _mm512_max_ps(x, _mm512_setzero_ps());
    case Activation::GeluTanh: {
      const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
      const __m512 u2 = _mm512_mul_ps(_mm512_set1_ps(1.5957691216057308f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
      const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), u2));
      return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    }
    case Activation::Gelu: {
      const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
      const __m512 ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign, _mm512_castps_si512(x)));
      const __m512 z = _mm512_mul_ps(ax, _mm512_set1_ps(0.7071067811865476f));
      const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), z, _mm512_set1_ps(1.0f)));
      __m512 p = _mm512_set1_ps(1.061405429f);
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
      p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
      const __m512 ez = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z)));
      const __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(p, t), ez, _mm512_set1_ps(1.0f));
      const __m512 erf = _mm512_castsi512_ps(
          _mm512_or_si512(_mm512_castps_si512(e), _mm512_and_si512(sign, _mm512_castps_si512(x))));
      return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
    }
  }
  return x;
}

void bias_act(float* h, const float* b, int64_t n, Activation act) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(h + i, act512(_mm512_add_ps(_mm512_loadu_ps(h + i), _mm512_loadu_ps(b + i)), act));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, h + i), _mm512_maskz_loadu_ps(m, b + i));
    _mm512_mask_storeu_ps(h + i, m, act512(v, act));
  }
}

void half_to_float(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  if (i < n) {  // tail through a zeroed buffer (16-bit masked loads would need AVX-512BW)
    uint16_t t[16] = {0};
    std::memcpy(t, src + i, sizeof(uint16_t) * (n - i));
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t))));
  }
}

void float_to_half(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    uint16_t t[16];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t),
                        _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    std::memcpy(dst + i, t, sizeof(uint16_t) * (n - i));
  }
}

// float32 and float16 B through the same templates.
const PackedOps kOps = {"avx512", NR, pack_b<float>, gemm_rows<float>, pack_b<uint16_t>,
                         gemm_rows<uint16_t>, bias_act, half_to_float, float_to_half};

}  // namespace

const PackedOps* ops() { return &kOps; }

}  // namespace avx512
}  // namespace moefy
