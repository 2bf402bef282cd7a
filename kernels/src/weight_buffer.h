// Memory for the pre-packed weights: 2 MB aligned and, on Linux, marked for transparent huge pages. The packed path
// streams all of it on every call where every expert runs (32 MB at VAR-d16 size); with 4 KB pages each page is a TLB
// miss and a restart of the hardware prefetcher. Measured: see kernels/README.md.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moefy {

class WeightBuffer {
 public:
  WeightBuffer() = default;
  WeightBuffer(const WeightBuffer&) = delete;
  WeightBuffer& operator=(const WeightBuffer&) = delete;
  ~WeightBuffer() { reset(); }

  // n elements of elem_size bytes (float32 or float16 panels), contents unspecified; throws std::bad_alloc.
  void allocate(size_t n, size_t elem_size = sizeof(float));
  void reset();
  float* data() { return static_cast<float*>(p_); }
  const float* data() const { return static_cast<const float*>(p_); }
  uint16_t* half() { return static_cast<uint16_t*>(p_); }
  const uint16_t* half() const { return static_cast<const uint16_t*>(p_); }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace moefy
