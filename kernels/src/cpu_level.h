// Run-time CPU dispatch (as MLAS does): the packed micro-kernels exist for AVX-512 and AVX2+FMA, each compiled in
// its own unit with its own -m flags; everything else is built for baseline x86-64 and picks a level by cpuid.
#pragma once

#include <string>

#include "packed.h"

namespace moefy {

enum class CpuLevel { Plain = 0, Avx2 = 1, Avx512 = 2 };

const char* level_name(CpuLevel l);

// The best level this CPU (and OS) supports.
CpuLevel detected_cpu_level();

// The level to use: detected_cpu_level(), capped by the environment variable MOEFY_CPU_LEVEL (plain | avx2 |
// avx512) for tests and measurements. A level above the CPU's is not used (note says so); an unknown value is an
// error (returned message non-empty).
CpuLevel chosen_cpu_level(std::string* note, std::string* error);

// The micro-kernels of a level (Plain: bias + activation and float16 conversion only, no packed GEMM).
const PackedOps* ops_for(CpuLevel l);

}  // namespace moefy
