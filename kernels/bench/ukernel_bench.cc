// The packed micro-kernels alone (gemm_rows), at the shapes of one DynamicMoE call, per CPU level: GFLOP/s per core
// with the weights streamed from memory (many experts' worth, more than the last-level cache), on one core and on
// every thread at once (each with its own weights). It shows how close the kernel is to the core's FMA limit at a
// given number of rows per expert, apart from routing, threads and ONNX Runtime. `npm run bench ukernel`.
//
//   moefy_ukernel_bench [--threads 2] [--reps 20] [--mb 64]
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "packed.h"

namespace {

using moefy::PackedOps;

struct Shape {
  const char* what;
  int64_t M, K, N;
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One worker: E experts' packed B panels (about `mb` MiB, on 2 MB pages where the kernel allows), M of 256 token rows
// gathered per expert, C rows added into as the kernel does. Returns the best GFLOP/s over the reps. Workers of one
// measurement start timing together (`ready` counts those done packing).
double run(const PackedOps* ops, const Shape& s, int64_t mb, int reps, unsigned seed, std::atomic<int>& ready, int workers) {
  const int64_t T = 256, NR = ops->nr;
  const int64_t stride = (s.N + NR - 1) / NR * s.K * NR;
  const int64_t E = std::max<int64_t>(1, (mb << 20) / (stride * 4));
  const size_t bytes = ((E * stride * 4) / (2 << 20) + 1) * (2 << 20);
  float* W = static_cast<float*>(std::aligned_alloc(2 << 20, bytes));
  madvise(W, bytes, MADV_HUGEPAGE);
  std::mt19937 g(seed);
  std::vector<float> src(s.K * s.N);
  for (auto& v : src) v = static_cast<float>(g() % 1000) / 1000.f - 0.5f;
  for (int64_t e = 0; e < E; ++e) ops->pack_b(src.data(), s.N, s.K, 0, s.N, W + e * stride);
  std::vector<float> A(T * s.K), C(T * s.N);
  for (auto& v : A) v = static_cast<float>(g() % 1000) / 1000.f;
  std::vector<std::vector<int>> rows(E);
  for (auto& r : rows) {
    std::vector<int> idx(T);
    for (int i = 0; i < T; ++i) idx[i] = i;
    std::shuffle(idx.begin(), idx.end(), g);
    r.assign(idx.begin(), idx.begin() + s.M);
    std::sort(r.begin(), r.end());
  }
  std::vector<const float*> a(s.M);
  std::vector<float*> c(s.M);
  ready.fetch_add(1);
  while (ready.load() < workers) std::this_thread::yield();
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const double t0 = now_s();
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t i = 0; i < s.M; ++i) {
        a[i] = A.data() + rows[e][i] * s.K;
        c[i] = C.data() + rows[e][i] * s.N;
      }
      ops->gemm_rows(s.M, s.K, s.N, a.data(), W + e * stride, NR, s.K * NR, c.data(), true);
    }
    best = std::min(best, now_s() - t0);
  }
  std::free(W);
  return 2.0 * s.M * s.K * s.N * E / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 20;
  int64_t mb = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--threads") threads = std::max(1, std::atoi(argv[i + 1]));
    else if (k == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
    else if (k == "--mb") mb = std::max(1, std::atoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "moefy_ukernel_bench: unknown option %s (options: --threads N, --reps N, --mb N)\n", argv[i]);
      return 1;
    }
  }
  // The shapes of D 1024, H 4096, E 32 (S 128): fc1 of one expert, fc2 of one expert over half of the output columns
  // (the column split at 256 tokens), at 64 rows (256 tokens, p = 0.25) and 256 rows (p = 1).
  const Shape shapes[] = {{"fc1, 64 rows", 64, 1024, 128},  {"fc2 half, 64 rows", 64, 128, 512},
                          {"fc1, 256 rows", 256, 1024, 128}, {"fc2 half, 256 rows", 256, 128, 512},
                          {"fc1, 8 rows", 8, 1024, 128}};
  std::vector<const PackedOps*> levels;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) levels.push_back(moefy::avx512::ops());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) levels.push_back(moefy::avx2::ops());
  if (levels.empty()) {
    std::printf("no packed micro-kernel on this CPU (neither AVX-512F nor AVX2+FMA)\n");
    return 0;
  }
  std::printf("packed micro-kernels alone: weights streamed from %lld MiB per thread, best of %d, GFLOP/s per core\n",
              static_cast<long long>(mb), reps);
  std::printf("%-8s %-20s %10s %14s\n", "level", "shape", "1 thread", std::to_string(threads).append(" at once").c_str());
  for (const PackedOps* ops : levels)
    for (const Shape& s : shapes) {
      std::atomic<int> alone{0}, together{0};
      const double one = run(ops, s, mb, reps, 1, alone, 1);
      std::vector<double> each(threads);
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { each[t] = run(ops, s, mb, reps, 2 + t, together, threads); });
      for (auto& th : pool) th.join();
      std::printf("%-8s %-20s %10.1f %14.1f\n", ops->name, s.what, one, *std::min_element(each.begin(), each.end()));
    }
  return 0;
}
