// Small AVX-512 GEMM for the DynamicMoE CPU kernel: weights pre-packed once per kernel (constant initializers),
// A rows and C rows addressed through per-row pointers, so the token gather happens inside the GEMM and the
// expert output is accumulated straight into the token rows (no gathered copy of X, no scatter pass).
//
// Packed B layout: panels of NR = 32 columns; panel p holds rows 0..K-1 of columns p*32 .. p*32+31, row-major
// ([K][32]); columns past the matrix edge are zero.
#pragma once
#if defined(__AVX512F__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moefy {
namespace avx512 {

constexpr int NR = 32;
constexpr int MR = 12;

// Packs columns [c0, c0+ncols) of a row-major K x ld matrix into ceil(ncols/32) panels at dst.
inline void pack_b(const float* src, int64_t ld, int64_t K, int64_t c0, int64_t ncols, float* dst) {
  const int64_t np = (ncols + NR - 1) / NR;
  for (int64_t p = 0; p < np; ++p) {
    const int64_t n = std::min<int64_t>(NR, ncols - p * NR);
    float* out = dst + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      const float* row = src + k * ld + c0 + p * NR;
      std::memcpy(out + k * NR, row, sizeof(float) * n);
      if (n < NR) std::memset(out + k * NR + n, 0, sizeof(float) * (NR - n));
    }
  }
}

// C[r][0..ncols) (+)= sum_k A[r][k] * Bp[k][0..ncols) for r < M (M <= MR); A rows at a[r] + k, C rows at c[r].
template <int M>
inline void ukernel(int64_t K, const float* const* a, const float* bp, int64_t ldb, float* const* c, int ncols,
                    bool accumulate) {
  const __mmask16 m0 = static_cast<__mmask16>(ncols >= 16 ? 0xFFFF : ((1u << ncols) - 1));
  const __mmask16 m1 = static_cast<__mmask16>(ncols >= 32 ? 0xFFFF : ncols <= 16 ? 0 : ((1u << (ncols - 16)) - 1));
  __m512 acc0[M], acc1[M];
  for (int r = 0; r < M; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  const float* ar[M];
  for (int r = 0; r < M; ++r) ar[r] = a[r];
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bp + k * ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, bp + k * ldb + 16);
    for (int r = 0; r < M; ++r) {
      const __m512 av = _mm512_set1_ps(ar[r][k]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
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

inline void ukernel_dispatch(int M, int64_t K, const float* const* a, const float* bp, int64_t ldb, float* const* c,
                             int ncols, bool accumulate) {
  switch (M) {
    case 12: ukernel<12>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 11: ukernel<11>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 10: ukernel<10>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 9: ukernel<9>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 8: ukernel<8>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 7: ukernel<7>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 6: ukernel<6>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 5: ukernel<5>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 4: ukernel<4>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 3: ukernel<3>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 2: ukernel<2>(K, a, bp, ldb, c, ncols, accumulate); break;
    case 1: ukernel<1>(K, a, bp, ldb, c, ncols, accumulate); break;
    default: break;
  }
}

// C (+)= A * B for M rows (any count), with A rows a[r] (K floats each, from column 0) and C rows c[r].
// B element (k, j) is at b[(j / 32) * panel_stride + k * ldb + j % 32]: packed panels (ldb 32, panel_stride K*32)
// or a plain row-major matrix (ldb = its row length, panel_stride 32). K is blocked by KC so that a row block of A
// stays in L1 across the panels. When accumulate is false the first K block overwrites C.
inline void gemm_rows(int64_t M, int64_t K, int64_t ncols, const float* const* a, const float* b, int64_t ldb,
                      int64_t panel_stride, float* const* c, bool accumulate, int64_t KC = 256) {
  const int64_t np = (ncols + NR - 1) / NR;
  const float* ab[MR];
  float* cb[MR];
  for (int64_t r0 = 0; r0 < M; r0 += MR) {
    const int m = static_cast<int>(std::min<int64_t>(MR, M - r0));
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      for (int r = 0; r < m; ++r) ab[r] = a[r0 + r] + k0;
      for (int64_t p = 0; p < np; ++p) {
        const int n = static_cast<int>(std::min<int64_t>(NR, ncols - p * NR));
        for (int r = 0; r < m; ++r) cb[r] = c[r0 + r] + p * NR;
        ukernel_dispatch(m, kc, ab, b + p * panel_stride + k0 * ldb, ldb, cb, n, accumulate || k0 > 0);
      }
    }
  }
}

}  // namespace avx512
}  // namespace moefy
#endif
