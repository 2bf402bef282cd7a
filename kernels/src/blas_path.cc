#include "blas_path.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>

namespace moefy {

void blas_reserve(Slot* slot, size_t rows, const Ffn& f) {
  grow(slot->a, rows * static_cast<size_t>(f.D));
  grow(slot->h, rows * static_cast<size_t>(f.S));
  grow(slot->z, rows * static_cast<size_t>(f.D));
}

void blas_expert_chunk(const Ffn& f, Slot* slot, float* acc, int64_t e, const int64_t* tk, int m) {
  const int64_t D = f.D, S = f.S, ES = f.ES;
  float* A = slot->a.data();
  float* H = slot->h.data();
  float* Z = slot->z.data();
  for (int r = 0; r < m; ++r) std::memcpy(A + r * D, f.X + tk[r] * D, sizeof(float) * D);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(S), static_cast<int>(D), 1.0f, A,
              static_cast<int>(D), f.W1 + e * S, static_cast<int>(ES), 0.0f, H, static_cast<int>(S));
  for (int r = 0; r < m; ++r) f.ops->bias_act(H + r * S, f.B1 + e * S, S, f.act);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(D), static_cast<int>(S), 1.0f, H,
              static_cast<int>(S), f.W2 + e * S * D, static_cast<int>(D), 0.0f, Z, static_cast<int>(D));
  for (int r = 0; r < m; ++r) {
    float* y = acc + tk[r] * D;
    const float* z = Z + r * D;
    for (int64_t d = 0; d < D; ++d) y[d] += z[d];
  }
}

void blas_dense(const Ffn& f, Workspace& ws, const ParCtx& pc) {
  const int64_t N = f.N, D = f.D, ES = f.ES;
  const int64_t RB = 512;
  const int64_t nrb = (N + RB - 1) / RB;
  const int64_t rows_max = (N + nrb - 1) / nrb;
  const int64_t HC = std::max<int64_t>(64, std::min<int64_t>(ES, 512));  // hidden columns per phase-1 task
  const int64_t DC = std::max<int64_t>(64, std::min<int64_t>(D, 256));   // output columns per phase-2 task
  const int64_t nhc = (ES + HC - 1) / HC, ndc = (D + DC - 1) / DC;
  grow(ws.hidden, static_cast<size_t>(rows_max * ES));
  float* Hd = ws.hidden.data();
  for (int64_t rb = 0; rb < nrb; ++rb) {
    const int64_t r0 = rb * N / nrb, r1 = (rb + 1) * N / nrb;
    const int m = static_cast<int>(r1 - r0);
    parallel_for(pc, static_cast<size_t>(nhc), [&](size_t j) {
      const int64_t c0 = static_cast<int64_t>(j) * HC, c1 = std::min(ES, c0 + HC);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(c1 - c0), static_cast<int>(D), 1.0f,
                  f.X + r0 * D, static_cast<int>(D), f.W1 + c0, static_cast<int>(ES), 0.0f, Hd + c0, static_cast<int>(ES));
      for (int r = 0; r < m; ++r) f.ops->bias_act(Hd + r * ES + c0, f.B1 + c0, c1 - c0, f.act);
    });
    parallel_for(pc, static_cast<size_t>(ndc), [&](size_t j) {
      const int64_t c0 = static_cast<int64_t>(j) * DC, c1 = std::min(D, c0 + DC);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, static_cast<int>(c1 - c0), static_cast<int>(ES), 1.0f,
                  Hd, static_cast<int>(ES), f.W2 + c0, static_cast<int>(D), 1.0f, f.Y + r0 * D + c0, static_cast<int>(D));
    });
  }
}

}  // namespace moefy
