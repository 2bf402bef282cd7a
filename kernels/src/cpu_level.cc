// CPU level detection and the MOEFY_CPU_LEVEL override.
#include "cpu_level.h"

#include <cstdlib>
#include <cstring>

namespace moefy {

const char* level_name(CpuLevel l) {
  switch (l) {
    case CpuLevel::Avx512: return "avx512";
    case CpuLevel::Avx2: return "avx2";
    default: return "plain";
  }
}

CpuLevel detected_cpu_level() {
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's cpuid checks also that the OS saves the ymm/zmm state (XGETBV), not only the CPU's feature bits.
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f")) return CpuLevel::Avx512;
  if (avx2) return CpuLevel::Avx2;
#endif
  return CpuLevel::Plain;
}

CpuLevel chosen_cpu_level(std::string* note, std::string* error) {
  const CpuLevel cpu = detected_cpu_level();
  const char* env = std::getenv("MOEFY_CPU_LEVEL");
  if (!env || !*env) return cpu;
  CpuLevel want;
  if (!std::strcmp(env, "plain")) want = CpuLevel::Plain;
  else if (!std::strcmp(env, "avx2")) want = CpuLevel::Avx2;
  else if (!std::strcmp(env, "avx512")) want = CpuLevel::Avx512;
  else {
    *error = std::string("MOEFY_CPU_LEVEL=") + env + " is not one of plain, avx2, avx512";
    return cpu;
  }
  if (static_cast<int>(want) > static_cast<int>(cpu)) {
    *note = std::string("MOEFY_CPU_LEVEL=") + env + " is above this CPU's level (" + level_name(cpu) + "); using " + level_name(cpu);
    return cpu;
  }
  return want;
}

const PackedOps* ops_for(CpuLevel l) {
  switch (l) {
    case CpuLevel::Avx512: return avx512::ops();
    case CpuLevel::Avx2: return avx2::ops();
    default: return plain::ops();
  }
}

}  // namespace moefy
