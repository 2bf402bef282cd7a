// The experts' activation (the op's `activation` attribute) and its scalar function, for the plain TypeScript
// reference, the router replay and the FFN references of the calibration code.

export type ActivationKind = 'relu' | 'gelu_tanh' | 'gelu';
/** The attribute's default. */
export const DEFAULT_ACTIVATION: ActivationKind = 'relu';

/** The tanh approximation's constants: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export const GELU_TANH = { sqrt2OverPi: Math.sqrt(2 / Math.PI), cubic: 0.044715 } as const;

/** erf(x) via the complementary error function's Chebyshev fit (Numerical Recipes erfcc, |rel err| < 1.2e-7). */
export function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? 1 - r : r - 1;
}

/** act(x): ReLU, GELU with the tanh approximation, or exact (erf) GELU. */
export function activate(x: number, kind: ActivationKind): number {
  switch (kind) {
    case 'relu':
      return x > 0 ? x : 0;
    case 'gelu_tanh':
      return 0.5 * x * (1 + Math.tanh(GELU_TANH.sqrt2OverPi * (x + GELU_TANH.cubic * x * x * x)));
    case 'gelu':
      return 0.5 * x * (1 + erf(x / Math.SQRT2));
  }
}
