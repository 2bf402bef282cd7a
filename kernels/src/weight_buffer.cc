#include "weight_buffer.h"

#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moefy {

void WeightBuffer::allocate(size_t n, size_t elem_size) {
  reset();
  if (n == 0) return;
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t bytes = n * elem_size;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  void* p = nullptr;
  if (posix_memalign(&p, align, (bytes + align - 1) / align * align) != 0) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  // Only a hint: where transparent huge pages are off the call fails and 4 KB pages are used.
  if (align == kHuge) madvise(p, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
#endif
  p_ = p;
  n_ = n;
}

void WeightBuffer::reset() {
  std::free(p_);
  p_ = nullptr;
  n_ = 0;
}

}  // namespace moefy
