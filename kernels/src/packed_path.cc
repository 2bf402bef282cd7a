#include "packed_path.h"

namespace moefy {

namespace {

// W1 [D, E*S] and W2 [E*S, D] (row-major, element type T) into per-expert panels of k->ops's width; W2 only with
// pack_w2 (else read in place).
template <typename T>
void pack_panels(Kernel* k, const T* W1, const T* W2, int64_t D, int64_t ES, bool pack_w2,
                 void (*pack)(const T*, int64_t, int64_t, int64_t, int64_t, T*), T* (*at)(WeightBuffer&)) {
  const int64_t E = k->attr.num_experts, S = ES / E, NR = k->ops->nr;
  k->w1p_stride = (S + NR - 1) / NR * D * NR;
  k->w2p_stride = (D + NR - 1) / NR * S * NR;
  k->w1p.allocate(static_cast<size_t>(E * k->w1p_stride), sizeof(T));
  if (pack_w2) k->w2p.allocate(static_cast<size_t>(E * k->w2p_stride), sizeof(T));
  for (int64_t e = 0; e < E; ++e) {
    pack(W1, ES, D, e * S, S, at(k->w1p) + e * k->w1p_stride);
    if (pack_w2) pack(W2 + e * S * D, D, S, 0, D, at(k->w2p) + e * k->w2p_stride);
  }
  k->pD = D;
  k->pES = ES;
  k->packed = true;
}

}  // namespace

void pack_weights(Kernel* k, const float* W1, const float* W2, int64_t D, int64_t ES, bool pack_w2) {
  pack_panels<float>(k, W1, W2, D, ES, pack_w2, k->ops->pack_b, [](WeightBuffer& b) { return b.data(); });
  k->half_panels = false;
}

void pack_weights_half(Kernel* k, const uint16_t* W1, const uint16_t* W2, int64_t D, int64_t ES) {
  pack_panels<uint16_t>(k, W1, W2, D, ES, true, k->ops->pack_b_h, [](WeightBuffer& b) { return b.half(); });
  k->half_panels = true;
}

void packed_reserve(Slot* slot, size_t rows, const Ffn& f, const Kernel& k) {
  const size_t NR = static_cast<size_t>(k.ops->nr);
  grow(slot->h, rows * ((static_cast<size_t>(f.S) + NR - 1) / NR * NR));
  grow(slot->arows, rows);
  grow(slot->hrows, rows);
  grow(slot->crows, rows);
}

void packed_fc1_chunk(const Ffn& f, const Kernel& k, Slot* slot, int64_t e, const int64_t* tk, int m, float* H) {
  const int64_t D = f.D, S = f.S, NR = k.ops->nr;
  const int64_t Spad = (S + NR - 1) / NR * NR;
  const float** ar = slot->arows.data();
  float** hr = slot->hrows.data();
  for (int r = 0; r < m; ++r) {
    ar[r] = f.X + tk[r] * D;
    hr[r] = H + r * Spad;
  }
  if (k.half_panels)
    k.ops->gemm_rows_h(m, D, S, ar, k.w1p.half() + e * k.w1p_stride, NR, D * NR, hr, false);
  else
    k.ops->gemm_rows(m, D, S, ar, k.w1p.data() + e * k.w1p_stride, NR, D * NR, hr, false);
  for (int r = 0; r < m; ++r) k.ops->bias_act(hr[r], f.B1 + e * S, S, f.act);
}

void packed_fc2_cols(const Ffn& f, const Kernel& k, Slot* slot, float* Y, int64_t e, const int64_t* tk, int m,
                     const float* H, int64_t c0, int64_t nc) {
  const int64_t D = f.D, S = f.S, NR = k.ops->nr;
  const int64_t Spad = (S + NR - 1) / NR * NR;
  const float** hr = slot->arows.data();
  float** cr = slot->crows.data();
  for (int r = 0; r < m; ++r) {
    hr[r] = H + r * Spad;
    cr[r] = Y + tk[r] * D + c0;
  }
  if (k.half_panels)
    k.ops->gemm_rows_h(m, S, nc, hr, k.w2p.half() + e * k.w2p_stride + (c0 / NR) * S * NR, NR, S * NR, cr, true);
  else if (k.w2p.empty())
    k.ops->gemm_rows(m, S, nc, hr, f.W2 + e * S * D + c0, D, NR, cr, true);
  else
    k.ops->gemm_rows(m, S, nc, hr, k.w2p.data() + e * k.w2p_stride + (c0 / NR) * S * NR, NR, S * NR, cr, true);
}

void packed_expert_chunk(const Ffn& f, const Kernel& k, Slot* slot, float* acc, int64_t e, const int64_t* tk, int m) {
  packed_fc1_chunk(f, k, slot, e, tk, m, slot->h.data());
  packed_fc2_cols(f, k, slot, acc, e, tk, m, slot->h.data(), 0, f.D);
}

}  // namespace moefy
