// Interface of the per-instruction-set micro-kernels (packed_avx512.cc, packed_avx2.cc, plain_ops.cc). The packed
// path pre-packs constant W1/W2 once per kernel into panels of `nr` columns ([K][nr] row-major per panel, zero
// past the matrix edge); gemm_rows reads A rows and writes C rows through per-row pointers, so the token gather
// happens inside the GEMM and expert outputs are added straight into the token rows (no copy, no scatter).
// Kept free of library headers: instruction-set units must not emit shared inline code (see CMakeLists.txt).
#pragma once

#include <cstdint>

#include "activation.h"

namespace moefy {

struct PackedOps {
  const char* name;
  int nr;  // panel width of pack_b / gemm_rows; 0: no packed GEMM at this level
  // Packs columns [c0, c0 + ncols) of the row-major K x ld matrix src into ceil(ncols / nr) panels at dst.
  void (*pack_b)(const float* src, int64_t ld, int64_t K, int64_t c0, int64_t ncols, float* dst);
  // C (+)= A B for M rows: A rows a[r] (K floats), C rows c[r] (ncols floats). B element (k, j) is at
  // b[(j / nr) * panel_stride + k * ldb + j % nr]: packed panels (ldb nr, panel_stride K nr) or a plain row-major
  // matrix (ldb its row length, panel_stride nr). accumulate false: C is overwritten.
  void (*gemm_rows)(int64_t M, int64_t K, int64_t ncols, const float* const* a, const float* b, int64_t ldb,
                    int64_t panel_stride, float* const* c, bool accumulate);
  // The same for float16 B (IEEE binary16 bits): packed panels only (zero past the matrix edge), converted to float32
  // in the micro-kernel, so the products and sums are those of the float32 path. Null where the level has none.
  void (*pack_b_h)(const uint16_t* src, int64_t ld, int64_t K, int64_t c0, int64_t ncols, uint16_t* dst);
  void (*gemm_rows_h)(int64_t M, int64_t K, int64_t ncols, const float* const* a, const uint16_t* b, int64_t ldb,
                      int64_t panel_stride, float* const* c, bool accumulate);
  // h[i] = act(h[i] + b[i]) for i < n.
  void (*bias_act)(float* h, const float* b, int64_t n, Activation act);
  // float16 (IEEE binary16 bits) <-> float32, n values.
  void (*half_to_float)(const uint16_t* src, float* dst, int64_t n);
  void (*float_to_half)(const float* src, uint16_t* dst, int64_t n);
};

namespace avx512 {
const PackedOps* ops();
}
namespace avx2 {
const PackedOps* ops();
}
namespace plain {
const PackedOps* ops();
}

}  // namespace moefy
