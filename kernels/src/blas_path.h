// The OpenBLAS path: weights read in place (fed as graph inputs, or the plain CPU level, or MOEFY_CPU_GEMM=blas).
#pragma once

#include "kernel.h"

namespace moefy {

// Slot buffers for chunks of up to `rows` tokens.
void blas_reserve(Slot* slot, size_t rows, const Ffn& f);

// Expert e on tokens tk[0..m): gather the X rows, sgemm with W1's column block, bias + activation, sgemm with W2's
// row block, add into the token rows of acc.
void blas_expert_chunk(const Ffn& f, Slot* slot, float* acc, int64_t e, const int64_t* tk, int m);

// Every token runs every expert: Y += act(X W1 + B1) W2, row blocks of up to 512 tokens; phase 1 splits the hidden
// columns, phase 2 the output columns, so no task writes where another one does.
void blas_dense(const Ffn& f, Workspace& ws, const ParCtx& pc);

}  // namespace moefy
