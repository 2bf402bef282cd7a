// The FFN activations of DynamicMoE (attribute `activation`); no includes, so that every instruction-set unit can
// use it without pulling in shared inline code.
#pragma once

namespace moefy {
enum class Activation { Relu = 0, GeluTanh = 1, Gelu = 2 };
}  // namespace moefy
