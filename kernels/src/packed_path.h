// The packed path (levels avx2 and avx512): W1 and W2 packed once at kernel creation when they are constant
// initializers; per expert chunk the micro-kernel reads the X rows through the token indices, bias + activation run
// on the hidden tile, and the second GEMM adds straight into the token rows of the accumulator.
#pragma once

#include "kernel.h"

namespace moefy {

// Packs W1 [D, E*S] and W2 [E*S, D] (float32, row-major) for k->ops. W2 stays unpacked (read in place) when
// pack_w2 is false.
void pack_weights(Kernel* k, const float* W1, const float* W2, int64_t D, int64_t ES, bool pack_w2);
// The same from float16 W1, W2 (IEEE binary16 bits) into float16 panels, both packed (k->half_panels).
void pack_weights_half(Kernel* k, const uint16_t* W1, const uint16_t* W2, int64_t D, int64_t ES);

void packed_reserve(Slot* slot, size_t rows, const Ffn& f, const Kernel& k);

void packed_expert_chunk(const Ffn& f, const Kernel& k, Slot* slot, float* acc, int64_t e, const int64_t* tk, int m);

// The two halves of packed_expert_chunk for the column-split schedule (moe_cpu.cc). FC1: the m hidden rows of expert e
// for tokens tk into H (rows of ceil(S / nr) · nr floats), bias and activation applied. FC2: Y[tk][c0, c0 + nc) +=
// H rows · W2_e[:, c0, c0 + nc), c0 a multiple of nr.
void packed_fc1_chunk(const Ffn& f, const Kernel& k, Slot* slot, int64_t e, const int64_t* tk, int m, float* H);
void packed_fc2_cols(const Ffn& f, const Kernel& k, Slot* slot, float* Y, int64_t e, const int64_t* tk, int m,
                     const float* H, int64_t c0, int64_t nc);

}  // namespace moefy
