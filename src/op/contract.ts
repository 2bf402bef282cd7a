// The ai.moefy::DynamicMoE op contract, the one place the code states it (docs/dynamic-moe.md is its text). The
// analysis, the passes, eval, the runtime and the reference import these; the layering test fails on a second copy.

/** Operator domain, name and domain version. */
export const MOE_DOMAIN = 'ai.moefy';
export const MOE_OP = 'DynamicMoE';
export const MOE_OPSET = 1;

/** Inputs in order; optional ones may be empty. */
export const MOE_INPUTS = ['X', 'norms', 'W1', 'B1', 'W2', 'B2', 'scale_index', 'threshold', 'skip_bias'] as const;
/** Input positions by name. */
export const MOE_INPUT = { X: 0, norms: 1, W1: 2, B1: 3, W2: 4, B2: 5, scale_index: 6, threshold: 7, skip_bias: 8 } as const;
export const MOE_OUTPUTS = ['Y', 'active'] as const;
export const MOE_OUTPUT = { Y: 0, active: 1 } as const;
export const MOE_ATTRIBUTES = ['num_experts', 'activation', 'patch_nums', 'threshold', 'routing'] as const;

/** Whether a node is a DynamicMoE node. */
export function isDynamicMoe(n: { domain: string; opType: string }): boolean {
  return n.domain === MOE_DOMAIN && n.opType === MOE_OP;
}

/** The graph input moefy adds (float [num scales], initializer = calibrated defaults) that feeds every node's `threshold`. */
export const THRESHOLD_INPUT = 'moe_threshold';

/** The metadata_props keys moefy writes into a converted model. */
export const METADATA_PREFIX = 'moefy.';
export const METADATA = {
  version: 'moefy.version',
  options: 'moefy.options',
  seed: 'moefy.seed',
  fromScale: 'moefy.from_scale',
  expectedActiveFraction: 'moefy.expected_active_fraction',
  sourceProducer: 'moefy.source_producer',
} as const;

/** The default patch layout (`patch_nums`): VAR at 256 px, side length of each scale, coarse to fine. */
export const VAR_PATCH_NUMS: readonly number[] = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];

/**
 * The scale (0-based) of each position of a sequence of L tokens: `scale_index` when given; else, when L = Σ pn²
 * (the full teacher-forcing sequence), the scale whose token range holds the position; else, when L = pn_s² for
 * exactly one s (one KV-cached step), s for every token; else null (the op fails, naming L and the layout).
 */
export function scaleOfPositions(L: number, patchNums: readonly number[], scaleIndex?: number): number[] | null {
  if (scaleIndex !== undefined) return new Array<number>(L).fill(scaleIndex);
  const full = patchNums.reduce((a, p) => a + p * p, 0);
  if (L === full) {
    const out: number[] = [];
    patchNums.forEach((p, s) => {
      for (let i = 0; i < p * p; i++) out.push(s);
    });
    return out;
  }
  const s = scaleOfStep(L, patchNums);
  return s >= 0 ? new Array<number>(L).fill(s) : null;
}

/** The rule's step case: the scale s with pn_s² = L when exactly one has it, else -1. */
export function scaleOfStep(L: number, patchNums: readonly number[]): number {
  const m = patchNums.map((p, s) => (p * p === L ? s : -1)).filter((s) => s >= 0);
  return m.length === 1 ? m[0] : -1;
}
