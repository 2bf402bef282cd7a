// Kernel creation (attributes, CPU level, constant weights packed or converted once) and one call: check the inputs,
// route, pick the path (packed micro-kernels, OpenBLAS per expert, or OpenBLAS dense), run the expert groups.
//
// The (expert, token) pairs that run, expert-major, are cut into a fixed number of equal groups; each group is one
// task on ONNX Runtime's intra-op pool and adds its pairs, experts in ascending order, into its own accumulator
// (group 0: Y itself); the accumulators are then added to Y in group order, so results are bitwise the same
// whatever the thread count or scheduling (at a given CPU level and core count). Few tokens: the groups compute the
// pairs' hidden rows, then own column ranges of Y (no accumulators; see column_split).
#include "moe_cpu.h"

#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>

#include "blas_path.h"
#include "packed_path.h"
#include "routing.h"

namespace moefy {

namespace {

constexpr ONNXTensorElementDataType kF32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr ONNXTensorElementDataType kF16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;

// Constant W1, B1, W2, B2, skip_bias (initializers): W1 and W2 are packed for the packed path when the level has one
// (float16 ones into float16 panels), the other float16 ones converted to float32 once. Anything unexpected leaves
// the weights to be read per call (compute reports shape errors).
void prepare_constants(Kernel* k, const OrtKernelInfo* info) {
  const OrtApi* api = k->api;
  size_t nin = 0;
  if (detail::drop(api, api->KernelInfo_GetInputCount(info, &nin))) return;
  TensorIn c[kNumInputs];
  bool is_const[kNumInputs] = {};
  for (int i : {kW1, kB1, kW2, kB2, kSkipBias}) {
    if (static_cast<size_t>(i) >= nin) continue;
    int flag = 0;
    const OrtValue* v = nullptr;
    if (detail::drop(api, api->KernelInfoGetConstantInput_tensor(info, i, &flag, &v)) || !flag || !v) continue;
    try {
      describe(api, v, c[i]);
    } catch (const Error&) {
      continue;
    }
    if (c[i].type != (k->f16 ? kF16 : kF32)) continue;
    is_const[i] = true;
  }
  // W1 and W2 packed for the packed path when the level has one and the shapes are what compute expects.
  const char* mode = std::getenv("MOEFY_CPU_GEMM");
  const bool shapes_ok = is_const[2] && is_const[4] && c[2].dims.size() == 2 && c[4].dims.size() == 2 && c[2].dims[0] > 0 &&
                         c[2].dims[1] > 0 && c[2].dims[1] % k->attr.num_experts == 0 && c[4].dims[0] == c[2].dims[1] &&
                         c[4].dims[1] == c[2].dims[0];
  const bool pack = k->ops->nr != 0 && shapes_ok && !(mode && std::string(mode) == "blas");
  // MOEFY_LOW_MEMORY=1: float16 weights go into float16 panels (half the bytes of the float32 copy, converted exactly
  // in the micro-kernel, so the same results): no float32 copy of W1, W2 is made. Not the default: the conversions
  // take FMA slots, measured up to 8% slower where every expert runs and no faster at few tokens (Zen 5).
  const char* low = std::getenv("MOEFY_LOW_MEMORY");
  const bool low_memory = low && low[0] == '1';
  const bool half_panels = pack && k->f16 && k->ops->pack_b_h && low_memory;
  const float* f32[kNumInputs] = {};
  for (int i : {kW1, kB1, kW2, kB2, kSkipBias}) {
    if (!is_const[i] || (half_panels && (i == kW1 || i == kW2))) continue;
    if (k->f16) {
      k->const_f32[i].resize(static_cast<size_t>(c[i].size()));
      k->ops->half_to_float(static_cast<const uint16_t*>(c[i].data), k->const_f32[i].data(), c[i].size());
      f32[i] = k->const_f32[i].data();
    } else {
      f32[i] = static_cast<const float*>(c[i].data);
    }
  }
  if (!pack) return;
  const int64_t D = c[2].dims[0], ES = c[2].dims[1];
  if (half_panels) {
    pack_weights_half(k, static_cast<const uint16_t*>(c[2].data), static_cast<const uint16_t*>(c[4].data), D, ES);
    return;
  }
  // W2's expert blocks are contiguous and usable in place; packing them too is 10-30% faster but doubles the
  // memory of the pre-packed copy. MOEFY_LOW_MEMORY=1 packs W1 only (float16 weights are always packed).
  const bool pack_w2 = k->f16 || !low_memory;
  pack_weights(k, f32[2], f32[4], D, ES, pack_w2);
  FloatBuffer().swap(k->const_f32[2]);
  if (pack_w2) FloatBuffer().swap(k->const_f32[4]);
}

// float16 -> float32 of n values, split over the pool in blocks.
void to_float(const ParCtx& pc, const PackedOps* ops, const void* src, FloatBuffer& dst, int64_t n) {
  grow(dst, static_cast<size_t>(n));
  const int64_t blk = 1 << 16, nb = (n + blk - 1) / blk;
  const uint16_t* s = static_cast<const uint16_t*>(src);
  parallel_for(pc, static_cast<size_t>(nb), [&](size_t b) {
    const int64_t i0 = static_cast<int64_t>(b) * blk;
    ops->half_to_float(s + i0, dst.data() + i0, std::min(blk, n - i0));
  });
}

}  // namespace

OpKernel* create_kernel(const OrtApi* api, const OrtKernelInfo* info, bool f16) {
  std::unique_ptr<Kernel> k(new Kernel(api));
  k->f16 = f16;
  std::string err = read_attributes(api, info, "DynamicMoE", &k->attr);
  if (!err.empty()) throw Error{err};
  std::string note;
  k->level = chosen_cpu_level(&note, &err);
  if (!err.empty()) throw Error{"DynamicMoE: " + err};
  k->ops = ops_for(k->level);
  try {
    prepare_constants(k.get(), info);
  } catch (const std::bad_alloc&) {  // no memory for the packed copy: read the weights per call
    k->packed = false;
    k->half_panels = false;
    k->w1p.reset();
    k->w2p.reset();
  }
  k->groups = std::min<int64_t>(16, std::max<int64_t>(2, static_cast<int64_t>(std::thread::hardware_concurrency())));
  if (const char* g = std::getenv("MOEFY_KERNEL_GROUPS"); g && std::atoi(g) > 0) k->groups = std::min(16, std::atoi(g));
  if (const char* tr = std::getenv("MOEFY_KERNEL_TRACE"); tr && tr[0] == '1') {
    if (!note.empty()) std::fprintf(stderr, "moefy: %s\n", note.c_str());
    std::fprintf(stderr, "moefy: DynamicMoE CPU kernel created (T %s, level %s, num_experts %lld, %zu scales, weights %s)\n",
                 f16 ? "float16" : "float32", level_name(k->level), static_cast<long long>(k->attr.num_experts),
                 k->attr.patch_nums.size(), k->packed ? (k->half_panels ? "pre-packed (float16 panels)" : "pre-packed") : "read per call");
  }
  return k.release();
}

void Kernel::compute(OrtKernelContext* ctx) {
  Kernel* k = this;
  MoeCall call;
  read_call(api, ctx, attr, f16, &call);
  const TensorIn &X = call.in[kX], &norms = call.in[kNorms], &W1 = call.in[kW1], &B1 = call.in[kB1], &W2 = call.in[kW2],
                 &B2 = call.in[kB2], &SB = call.in[kSkipBias];
  const int64_t L = call.L, D = call.D, E = call.E, S = call.S, ES = call.ES;
  const int64_t N = call.B * L;
  void* Yraw = call.Y;
  if (N == 0 || D == 0) return;

  std::unique_ptr<Workspace> wsp = acquire();
  struct Giveback {
    Kernel* k;
    std::unique_ptr<Workspace>* w;
    ~Giveback() { k->release(std::move(*w)); }
  } giveback{k, &wsp};
  Workspace& ws = *wsp;
  const ParCtx pc{api, ctx};

  grow(ws.scale_of_l, static_cast<size_t>(L));
  std::string err = scale_of_positions(attr, L, call.forced_scale, ws.scale_of_l.data(), "DynamicMoE");
  if (!err.empty()) throw Error{err, ORT_INVALID_ARGUMENT};

  const float* normsf = static_cast<const float*>(norms.data);
  if (f16) {
    to_float(pc, ops, norms.data, ws.nf, N * E);
    normsf = ws.nf.data();
  }
  grow(ws.mask, static_cast<size_t>(N * E));
  ws.counts.resize(static_cast<size_t>(E));
  const int64_t total_pairs = route(normsf, N, L, E, attr.routing, call.threshold, ws.scale_of_l.data(), ws.mask.data(),
                                    ws.counts.data(), call.active);

  const bool fused = k->packed && k->pD == D && k->pES == ES;
  // float32 operands: float16 inputs come from the kernel's constant copies or are converted for this call.
  auto operand = [&](const TensorIn& t, int index, FloatBuffer& scratch, bool needed) -> const float* {
    if (!f16) return static_cast<const float*>(t.data);
    if (!needed) return nullptr;
    if (!k->const_f32[index].empty() && k->const_f32[index].size() == static_cast<size_t>(t.size()))
      return k->const_f32[index].data();
    to_float(pc, k->ops, t.data, scratch, t.size());
    return scratch.data();
  };
  Ffn f;
  f.X = operand(X, kX, ws.xf, true);
  f.W1 = operand(W1, kW1, ws.w1f, !fused);
  f.B1 = operand(B1, kB1, ws.b1f, true);
  f.W2 = operand(W2, kW2, ws.w2f, !fused || k->w2p.empty());
  f.B2 = B2.present() ? operand(B2, kB2, ws.b2f, true) : nullptr;
  // Only skipped experts add their skip_bias row: none when every expert runs.
  f.skip = SB.present() && total_pairs < N * E ? operand(SB, kSkipBias, ws.sbf, true) : nullptr;
  if (f16) grow(ws.yf, static_cast<size_t>(N * D));
  f.Y = f16 ? ws.yf.data() : static_cast<float*>(Yraw);
  f.N = N, f.D = D, f.E = E, f.S = S, f.ES = ES;
  f.act = k->attr.activation;
  f.ops = k->ops;
  float* Y = f.Y;

  // Y (columns [c0, c1) of every token) starts as B2 (or 0) plus, in ascending order, the skip_bias rows of the
  // experts the token skips.
  const uint8_t* mask = ws.mask.data();
  auto init_y = [&](int64_t c0 = 0, int64_t c1 = -1) {
    if (c1 < 0) c1 = D;
    for (int64_t t = 0; t < N; ++t) {
      float* y = Y + t * D;
      if (f.B2) std::memcpy(y + c0, f.B2 + c0, sizeof(float) * (c1 - c0));
      else std::memset(y + c0, 0, sizeof(float) * (c1 - c0));
      if (!f.skip) continue;
      for (int64_t e = 0; e < E; ++e) {
        if (mask[t * E + e]) continue;
        const float* sb = f.skip + e * D;
        for (int64_t c = c0; c < c1; ++c) y[c] += sb[c];
      }
    }
  };

  // With pre-packed weights the packed path is as fast as the dense one even when every expert runs.
  if (total_pairs == N * E && !fused) {
    init_y();
    blas_dense(f, ws, pc);
  } else {
    build_token_lists(ws.mask.data(), N, E, ws, total_pairs);
    const int64_t TM = 512;  // max rows per expert task
    const int64_t G = group_count(*k, N, D, E);
    auto reserve = [&](Slot* slot, size_t rows) {
      if (fused) packed_reserve(slot, rows, f, *k);
      else blas_reserve(slot, rows, f);
    };
    while (ws.slots.size() < static_cast<size_t>(G)) ws.slots.emplace_back(new Slot());
    for (int64_t g = 0; g < G; ++g) reserve(ws.slots[g].get(), static_cast<size_t>(TM));
    const int64_t* tokens = ws.tokens.data();
    const int64_t* off = ws.offsets.data();
    // Group g's share: the (expert, token) pairs [g P / G, (g + 1) P / G) of the expert-major list (an expert at a
    // boundary is shared), in chunks of at most TM rows: fn(expert, first pair, rows).
    auto for_group_pairs = [&](int64_t g, auto&& fn) {
      const int64_t p0 = g * total_pairs / G, p1 = (g + 1) * total_pairs / G;
      for (int64_t e = std::upper_bound(off, off + E + 1, p0) - off - 1; e >= 0 && e < E && off[e] < p1; ++e) {
        const int64_t a = std::max(off[e], p0), b = std::min(off[e + 1], p1);
        for (int64_t c = a; c < b; c += TM) fn(e, c, static_cast<int>(std::min<int64_t>(TM, b - c)));
      }
    };
    auto run_chunk = [&](Slot* slot, float* acc, int64_t e, int64_t begin, int m) {
      if (fused) packed_expert_chunk(f, *k, slot, acc, e, tokens + begin, m);
      else blas_expert_chunk(f, slot, acc, e, tokens + begin, m);
    };

    // The column-split schedule (below) when its pair-indexed hidden buffer stays in cache (≤ 4 MiB: 256 tokens at
    // D 1024, E·S 4096 with every expert): measured 0.02–0.03 × dense faster there (no accumulator to zero and add),
    // slower at 2048 tokens, where the buffer reaches 32 MiB and comes back from memory (kernels/README.md).
    const bool column_split = fused && G > 1 && !(G == E && E < k->groups) &&
                              total_pairs * S * static_cast<int64_t>(sizeof(float)) <= (int64_t(4) << 20);
    if (G == E && E < k->groups) {
      init_y();
      // Few experts (one per group): the chunks of one expert touch disjoint token rows, so they run in parallel
      // too, each on its own scratch; the result stays independent of scheduling.
      ws.chunks.clear();
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = ws.offsets[e + 1] - ws.offsets[e];
        if (n == 0) continue;
        const int64_t nch = std::min<int64_t>(std::max<int64_t>((n + TM - 1) / TM, 8), (n + 47) / 48);
        for (int64_t c = 0; c < nch; ++c) {
          const int64_t a = c * n / nch, b = (c + 1) * n / nch;
          if (b > a) ws.chunks.push_back({e, ws.offsets[e] + a, b - a});
        }
      }
      while (ws.slots.size() < ws.chunks.size()) ws.slots.emplace_back(new Slot());
      for (size_t i = 0; i < ws.chunks.size(); ++i) reserve(ws.slots[i].get(), static_cast<size_t>(ws.chunks[i].count));
      for (int64_t g = 1; g < G; ++g) {
        grow(ws.slots[g]->acc, static_cast<size_t>(N * D));
        std::memset(ws.slots[g]->acc.data(), 0, sizeof(float) * N * D);
      }
      parallel_for(pc, ws.chunks.size(), [&](size_t i) {
        const auto& c = ws.chunks[i];
        float* acc = c.expert == 0 ? Y : ws.slots[c.expert]->acc.data();
        run_chunk(ws.slots[i].get(), acc, c.expert, c.begin, static_cast<int>(c.count));
      });
    } else if (column_split) {
      // Two phases, no accumulators: task g computes the hidden rows of its pairs into one pair-indexed buffer; then
      // task g owns output columns [c0, c1) of every token and adds all experts into them in ascending order. Each
      // Y element is B2 + e0 + e1 + … whatever G or the threads.
      const int64_t NR = k->ops->nr, Spad = (S + NR - 1) / NR * NR, npan = (D + NR - 1) / NR;
      grow(ws.hidden, static_cast<size_t>(total_pairs * Spad));
      float* Hp = ws.hidden.data();
      parallel_for(pc, static_cast<size_t>(G), [&](size_t gi) {
        Slot* slot = ws.slots[gi].get();
        for_group_pairs(static_cast<int64_t>(gi),
                        [&](int64_t e, int64_t c, int m) { packed_fc1_chunk(f, *k, slot, e, tokens + c, m, Hp + c * Spad); });
      });
      parallel_for(pc, static_cast<size_t>(G), [&](size_t gi) {
        const int64_t g = static_cast<int64_t>(gi);
        const int64_t c0 = std::min(D, g * npan / G * NR), c1 = std::min(D, (g + 1) * npan / G * NR);
        if (c1 <= c0) return;
        init_y(c0, c1);
        Slot* slot = ws.slots[g].get();
        for (int64_t e = 0; e < E; ++e)
          for (int64_t c = off[e]; c < off[e + 1]; c += TM) {
            const int m = static_cast<int>(std::min<int64_t>(TM, off[e + 1] - c));
            packed_fc2_cols(f, *k, slot, Y, e, tokens + c, m, Hp + c * Spad, c0, c1 - c0);
          }
      });
    } else {
      // Each group adds its pairs (equal work per group, fixed by the routing alone) into its own accumulator.
      for (int64_t g = 1; g < G; ++g) grow(ws.slots[g]->acc, static_cast<size_t>(N * D));
      parallel_for(pc, static_cast<size_t>(G), [&](size_t gi) {
        const int64_t g = static_cast<int64_t>(gi);
        Slot* slot = ws.slots[g].get();
        float* acc = Y;
        if (g > 0) {
          acc = slot->acc.data();
          std::memset(acc, 0, sizeof(float) * N * D);
        } else {
          init_y();
        }
        for_group_pairs(g, [&](int64_t e, int64_t c, int m) { run_chunk(slot, acc, e, c, m); });
      });
    }

    // Add the other groups' accumulators to Y, in group order.
    if (G > 1 && !column_split) {
      const int64_t RB = 64;
      const size_t nblk = static_cast<size_t>((N + RB - 1) / RB);
      parallel_for(pc, nblk, [&](size_t b) {
        const int64_t r0 = static_cast<int64_t>(b) * RB, r1 = std::min(N, r0 + RB);
        for (int64_t g = 1; g < G; ++g) {
          const float* src = ws.slots[g]->acc.data();
          for (int64_t i = r0 * D; i < r1 * D; ++i) Y[i] += src[i];
        }
      });
    }
  }

  if (f16) {
    uint16_t* Yh = static_cast<uint16_t*>(Yraw);
    const int64_t RB = 64;
    parallel_for(pc, static_cast<size_t>((N + RB - 1) / RB), [&](size_t b) {
      const int64_t r0 = static_cast<int64_t>(b) * RB, r1 = std::min(N, r0 + RB);
      k->ops->float_to_half(Y + r0 * D, Yh + r0 * D, (r1 - r0) * D);
    });
  }
}

}  // namespace moefy
