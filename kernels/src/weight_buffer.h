// Memory for the pre-packed weights: 2 MB aligned and, on Linux, marked for transparent huge pages. The packed path
// streams all of it on every call where every expert runs (32 MB at VAR-d16 size); with 4 KB pages each page is a TLB
// miss and a restart of the hardware prefetcher. Measured: see kernels/README.md.
#pragma once

#include <cstddef>

namespace moefy {

class WeightBuffer {
 public:
  WeightBuffer() = default;
  WeightBuffer(const WeightBuffer&) = delete;
  WeightBuffer& operator=(const WeightBuffer&) = delete;
  ~WeightBuffer() { reset(); }

  // n floats, contents unspecified; throws std::bad_alloc.
  void allocate(size_t n);
  void reset();
  float* data() { return p_; }
  const float* data() const { return p_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  float* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace moefy
