// Runs the CUDA DynamicMoE kernels on the CPU emulator (cuda_emu.h) against the host reference (moe_ref.h), for
// small cases that cover every code path: the three scale layouts, thresholds 0 / 1 / between (attribute and
// run-time input), the three routing rules, thresholds above 1, negative and NaN, skip_bias, E = 1, scalar and
// vector loaders (odd and aligned sizes), several tiles per expert, several routing chunks, several N tiles in both
// GEMMs, K remainders, persistent loops over more tiles than blocks.
//
// `emu_check --case IN OUT` runs one call given by a file instead and writes its outputs (the TypeScript reference
// checks them: test/cuda-emu.test.ts; the format is in run_file below).
// Each case runs in fp32 and fp16 (fp16 with both FC2 strategies: token-window and atomic), under three schedules: threads in order with immediate cp.async copies,
// reversed order with copies deferred to their wait, and a random order with deferred copies.
//
//   g++ -std=c++17 -O2 -DMOEFY_CUDA_EMULATE -I kernels/cuda -x c++ kernels/cuda/dynamic_moe_cuda.cu
//       -x none kernels/cuda/emu/emu_check.cc -o emu_check && ./emu_check      (one command line)
// (add -DMOEFY_EMU_VECTOR_ATOMICS to both to take the sm_90 float4-atomic epilogue). Exit 0 iff all pass.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "../dynamic_moe_cuda.h"
#include "../moe_ref.h"

extern "C" void moefy_emu_configure(int order, unsigned seed, int deferred);

using namespace moe_ref;

namespace {

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes) {
    const size_t n = bytes ? bytes : 1;  // exact size, so that AddressSanitizer sees any overrun
    if (posix_memalign(&p, 256, n) != 0) abort();
    memset(p, 0xff, n);  // NaN pattern
  }
  ~Buf() { free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

void* put(std::vector<Buf*>& keep, const std::vector<float>& v, bool half) {
  Buf* b = new Buf(v.size() * (half ? 2 : 4));
  keep.push_back(b);
  if (half) {
    uint16_t* h = static_cast<uint16_t*>(b->p);
    for (size_t i = 0; i < v.size(); ++i) h[i] = half_bits(v[i]);
  } else {
    memcpy(b->p, v.data(), v.size() * 4);
  }
  return b->p;
}

int g_fail = 0;
int g_checks = 0;

void run(const Case& c, bool half, uint64_t seed, int mode, int fc2_mode) {
  const int64_t T = c.B * c.L, D = c.D;
  const Data d = make_data(c, half, seed);
  std::vector<double> ref;
  std::vector<int> ref_active;
  reference(c, half, d, ref, ref_active);

  std::vector<Buf*> keep;
  MoeCudaArgs a;
  fill_args(a, c);
  a.dtype = half ? MOEFY_CUDA_F16 : MOEFY_CUDA_F32;
  a.fc2_mode = fc2_mode;
  a.X = put(keep, d.X, half);
  a.norms = put(keep, d.N, half);
  a.W1 = put(keep, d.W1, half);
  a.B1 = put(keep, d.B1, half);
  a.W2 = put(keep, d.W2, half);
  a.B2 = c.b2 ? put(keep, d.B2, half) : nullptr;
  a.skip_bias = c.skip ? put(keep, d.skip, half) : nullptr;
  Buf y((size_t)(T * D) * (half ? 2 : 4)), act((size_t)T * 4);
  a.Y = y.p;
  a.active = static_cast<int32_t*>(act.p);
  int64_t si = c.scale_index;
  if (c.scale_index >= 0 && c.si_host) {
    a.has_scale_index_host = 1;
    a.scale_index_host = c.scale_index;
  } else if (c.scale_index >= 0) {
    a.scale_index = &si;
  }
  if (c.thr_on_device) {
    a.threshold_dev = c.thr.data();
    for (int i = 0; i < MOEFY_CUDA_MAX_SCALES; ++i) a.threshold_attr[i] = -1.f;
  }
  const size_t ws_bytes = moefy_dynamic_moe_cuda_workspace_size(&a);
  Buf ws(ws_bytes);
  moefy_emu_configure(mode, (unsigned)seed, mode != 0);
  int rc = moefy_dynamic_moe_cuda(&a, ws.p, ws_bytes, nullptr);
  if (rc == MOEFY_CUDA_OK) rc = moefy_dynamic_moe_cuda(&a, ws.p, ws_bytes, nullptr);  // workspace reuse

  std::vector<float> out((size_t)(T * D));
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = half ? half_value(static_cast<uint16_t*>(y.p)[i]) : static_cast<float*>(y.p)[i];
  int nonfinite = 0, bad_active = 0;
  const double rel = rel_error(out, ref, &nonfinite);
  for (int64_t t = 0; t < T; ++t) bad_active += static_cast<int32_t*>(act.p)[t] != ref_active[(size_t)t];
  const double tol = half ? 1e-3 : 1e-5;
  const bool ok = rc == MOEFY_CUDA_OK && nonfinite == 0 && bad_active == 0 && rel <= tol;
  static const char* modes[] = {"in-order/immediate", "reverse/deferred", "random/deferred"};
  const char* fc2 = !half ? "atomic" : fc2_mode == MOEFY_CUDA_FC2_ATOMIC ? "atomic" : "window";
  printf("  %-4s %-6s %-18s %-46s T=%-4lld rel.err %.2e%s%s  %s\n", half ? "fp16" : "fp32", fc2, modes[mode], c.name.c_str(),
         (long long)T, rel, bad_active ? "  BAD-ACTIVE" : "", nonfinite ? "  NON-FINITE" : "", ok ? "ok" : "FAIL");
  if (rc != MOEFY_CUDA_OK) printf("    rc=%d %s\n", rc, moefy_dynamic_moe_cuda_last_error());
  if (!ok) ++g_fail;
  for (Buf* b : keep) delete b;
}

}  // namespace

// One call from a file, little-endian: int64 dtype (0 float32, 1 float16), fc2_mode, activation, routing, B, L, D,
// E, S, has_B2, has_skip_bias, scale_index (-1: none), num_patch_nums, patch_nums..., num_thresholds; then float32
// thresholds, X, norms, W1, B1, W2, [B2], [skip_bias] (float16 calls: values that are float16 numbers). Writes
// float32 Y [B, L, D], int32 active [B, L] and the int32 return code; the message of a failed call on stderr.
int run_file(const char* in, const char* out) {
  FILE* f = fopen(in, "rb");
  if (!f) return 2;
  std::vector<unsigned char> buf;
  unsigned char chunk[65536];
  for (size_t n; (n = fread(chunk, 1, sizeof chunk, f)) > 0;) buf.insert(buf.end(), chunk, chunk + n);
  fclose(f);
  size_t pos = 0;
  auto i64 = [&]() {
    int64_t v = 0;
    if (pos + 8 <= buf.size()) memcpy(&v, &buf[pos], 8);
    pos += 8;
    return v;
  };
  auto floats = [&](size_t n) {
    std::vector<float> v(n);
    if (pos + 4 * n <= buf.size()) memcpy(v.data(), &buf[pos], 4 * n);
    pos += 4 * n;
    return v;
  };
  MoeCudaArgs a;
  memset(&a, 0, sizeof(a));
  a.device = -1;
  a.dtype = (int)i64();
  a.fc2_mode = (int)i64();
  a.activation = (int)i64();
  a.routing = (int)i64();
  a.B = i64(), a.L = i64(), a.D = i64(), a.E = i64(), a.S = i64();
  const bool has_b2 = i64() != 0, has_skip = i64() != 0;
  const int64_t si = i64();
  a.num_patch_nums = (int)i64();
  if (a.num_patch_nums < 0 || a.num_patch_nums > MOEFY_CUDA_MAX_SCALES) return 2;
  for (int i = 0; i < a.num_patch_nums; ++i) a.patch_nums[i] = i64();
  a.num_thresholds = (int)i64();
  if (a.num_thresholds < 0 || a.num_thresholds > MOEFY_CUDA_MAX_SCALES) return 2;
  const std::vector<float> thr = floats((size_t)a.num_thresholds);
  for (int i = 0; i < a.num_thresholds; ++i) a.threshold_attr[i] = thr[(size_t)i];
  if (si >= 0) a.has_scale_index_host = 1, a.scale_index_host = si;
  const bool half = a.dtype == MOEFY_CUDA_F16;
  const int64_t T = a.B * a.L, ES = a.E * a.S;
  std::vector<Buf*> keep;
  a.X = put(keep, floats((size_t)(T * a.D)), half);
  a.norms = put(keep, floats((size_t)(T * a.E)), half);
  a.W1 = put(keep, floats((size_t)(a.D * ES)), half);
  a.B1 = put(keep, floats((size_t)ES), half);
  a.W2 = put(keep, floats((size_t)(ES * a.D)), half);
  if (has_b2) a.B2 = put(keep, floats((size_t)a.D), half);
  if (has_skip) a.skip_bias = put(keep, floats((size_t)(a.E * a.D)), half);
  if (pos != buf.size()) {
    fprintf(stderr, "%s: %zu bytes, expected %zu\n", in, buf.size(), pos);
    return 2;
  }
  Buf y((size_t)(T * a.D) * (half ? 2 : 4)), act((size_t)T * 4);
  a.Y = y.p;
  a.active = static_cast<int32_t*>(act.p);
  const size_t ws_bytes = moefy_dynamic_moe_cuda_workspace_size(&a);
  Buf ws(ws_bytes);
  moefy_emu_configure(2, 7, 1);  // random thread order, cp.async copies deferred to their wait
  const int32_t rc = moefy_dynamic_moe_cuda(&a, ws.p, ws_bytes, nullptr);
  if (rc != MOEFY_CUDA_OK) fprintf(stderr, "%s\n", moefy_dynamic_moe_cuda_last_error());
  std::vector<float> Y((size_t)(T * a.D));
  for (size_t i = 0; i < Y.size(); ++i)
    Y[i] = half ? half_value(static_cast<uint16_t*>(y.p)[i]) : static_cast<float*>(y.p)[i];
  for (Buf* b : keep) delete b;
  FILE* o = fopen(out, "wb");
  if (!o) return 2;
  fwrite(Y.data(), 4, Y.size(), o);
  fwrite(act.p, 4, (size_t)T, o);
  fwrite(&rc, 4, 1, o);
  return fclose(o) == 0 ? 0 : 2;
}

int main(int argc, char** argv) {
  if (argc == 4 && !strcmp(argv[1], "--case")) return run_file(argv[2], argv[3]);
  const bool quick = argc > 1 && !strcmp(argv[1], "--quick");
  const std::vector<int64_t> var = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
  const std::vector<Case> cases = {
      {"full-seq, thr 0/0.5/1, relu, B2", 2, 14, 64, 4, 16, MOEFY_CUDA_RELU, {1, 2, 3}, {0.f, 0.5f, 1.f}, -1, true, false},
      {"step, thr between, gelu_tanh (S%8!=0)", 3, 9, 40, 5, 12, MOEFY_CUDA_GELU_TANH, {1, 2, 3, 4}, {.2f, .3f, .4f, .5f}, -1, true, false},
      {"scale_index, odd sizes, gelu erf, no B2", 2, 7, 33, 3, 7, MOEFY_CUDA_GELU, {1, 2}, {0.9f, 0.1f}, 1, false, false},
      {"E=1, threshold 1", 1, 16, 64, 1, 32, MOEFY_CUDA_RELU, {1, 2, 4}, {1.f, 1.f, 1.f}, -1, true, false},
      {"thr 0, 5 tiles/expert, 3 chunks", 2, 300, 16, 3, 8, MOEFY_CUDA_RELU, {1, 2}, {0.f, 0.f}, 0, true, false},
      {"thr 0.6 run-time input, 300 tokens", 1, 300, 24, 5, 16, MOEFY_CUDA_GELU, {1, 2}, {0.f, 0.6f}, 1, true, true},
      {"D=S=136: 2 N tiles, K remainder", 1, 20, 136, 2, 136, MOEFY_CUDA_GELU_TANH, {1}, {0.f}, 0, true, false},
      {"VAR full sequence (680), per-scale thr", 1, 680, 16, 4, 8, MOEFY_CUDA_RELU, var,
       {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.2f, 0.5f, 0.8f}, -1, true, false},
      {"fp32 K remainder (D=20), S=12", 2, 4, 20, 3, 12, MOEFY_CUDA_GELU_TANH, {2}, {0.3f}, -1, true, false},
      {"scale_index by value (host), thr 0.5", 2, 40, 32, 4, 16, MOEFY_CUDA_GELU, {1, 2, 3}, {0.f, 0.5f, 1.f}, 1, true, false,
       true},
      {"VAR expert width S=128, D=64, 2 chunks, thr 0.4", 2, 144, 64, 6, 128, MOEFY_CUDA_GELU_TANH, {3, 12},
       {0.f, 0.4f}, -1, true, false},
      {"absolute, thr 0.3/0.6/2, skip_bias", 2, 14, 32, 8, 16, MOEFY_CUDA_RELU, {1, 2, 3}, {0.3f, 0.6f, 2.f}, -1, true,
       false, false, MOEFY_CUDA_ROUTING_ABSOLUTE, true},
      {"topk, thr 0.25/0.5, skip_bias, 2 chunks", 2, 144, 40, 8, 16, MOEFY_CUDA_GELU_TANH, {3, 12}, {0.25f, 0.5f},
       -1, true, false, false, MOEFY_CUDA_ROUTING_TOPK, true},
      {"relative, thr NaN/-1/1.5 (input), skip_bias, odd", 2, 14, 20, 5, 6, MOEFY_CUDA_GELU, {1, 2, 3},
       {NAN, -1.f, 1.5f}, -1, false, true, false, MOEFY_CUDA_ROUTING_RELATIVE, true},
  };
  printf("CUDA DynamicMoE kernels on the CPU emulator%s:\n",
#ifdef MOEFY_EMU_VECTOR_ATOMICS
         " (float4 atomics)"
#else
         ""
#endif
  );
  {  // host-side validation: the same errors as the CPU op
    Case c{"", 1, 10, 8, 2, 8, MOEFY_CUDA_RELU, {1, 2, 3}, {0.f, 0.f, 0.f}, -1, false, false};
    MoeCudaArgs a;
    fill_args(a, c);
    a.dtype = MOEFY_CUDA_F32;
    static float dummy[64];
    a.X = a.norms = a.W1 = a.B1 = a.W2 = dummy;
    a.Y = dummy;
    char msg[512];
    const bool bad_l = moefy_dynamic_moe_cuda_validate(&a, msg, sizeof(msg)) == MOEFY_CUDA_EINVAL && strstr(msg, "L = 10");
    printf("  %-4s %-65s %s\n", "-", "L fitting no layout is rejected, naming L", bad_l ? "ok" : "FAIL");
    a.has_scale_index_host = 1;
    a.scale_index_host = 3;
    const bool bad_si = moefy_dynamic_moe_cuda_validate(&a, msg, sizeof(msg)) == MOEFY_CUDA_EINVAL && strstr(msg, "scale_index 3");
    printf("  %-4s %-65s %s\n", "-", "scale_index out of range is rejected", bad_si ? "ok" : "FAIL");
    a.scale_index_host = 2;
    const bool good_si = moefy_dynamic_moe_cuda_validate(&a, msg, sizeof(msg)) == MOEFY_CUDA_OK;
    printf("  %-4s %-65s %s\n", "-", "scale_index in range makes any L valid", good_si ? "ok" : "FAIL");
    a.B = 0;
    const bool zero = moefy_dynamic_moe_cuda(&a, nullptr, 0, nullptr) == MOEFY_CUDA_OK && moefy_dynamic_moe_cuda_workspace_size(&a) == 0;
    printf("  %-4s %-65s %s\n", "-", "zero tokens: nothing to do", zero ? "ok" : "FAIL");
    g_fail += !bad_l + !bad_si + !good_si + !zero;
    g_checks += 4;
  }
  uint64_t seed = 99;
  for (const Case& c : cases) {
    for (int mode = 0; mode < (quick ? 1 : 3); ++mode) {
      run(c, false, seed, mode, MOEFY_CUDA_FC2_AUTO);
      run(c, true, seed, mode, MOEFY_CUDA_FC2_WINDOW);  // token-window FC2 where it applies (aligned sizes)
      run(c, true, seed, mode, MOEFY_CUDA_FC2_ATOMIC);
    }
    ++seed;
  }
  g_checks += (int)(cases.size() * 3 * (quick ? 1 : 3));
  printf("%d passed, %d failed\n", g_checks - g_fail, g_fail);
  return g_fail ? 1 : 0;
}
