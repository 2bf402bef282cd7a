// Plain TypeScript reference of computeExpertNorms (src/calib/expert-norms.ts): slow, for tests at tiny sizes.
import { ActivationKind, activate } from '../../src/op';

/** ‖act(x·W1_e + b1_e)·W2_e‖₂ per token and expert [N, E]; W1 [D, H], B1 [H], W2 [H, D], expert e owns S = H/E neurons. */
export function expertNormsReference(X: Float32Array, N: number, D: number, W1: Float32Array, B1: Float32Array, W2: Float32Array, E: number, activation: ActivationKind): Float32Array {
  const H = B1.length, S = H / E;
  const out = new Float32Array(N * E);
  const h = new Float64Array(H), y = new Float64Array(D);
  for (let t = 0; t < N; t++) {
    for (let j = 0; j < H; j++) {
      let a = B1[j];
      for (let d = 0; d < D; d++) a += X[t * D + d] * W1[d * H + j];
      h[j] = activate(a, activation);
    }
    for (let e = 0; e < E; e++) {
      y.fill(0);
      for (let j = e * S; j < (e + 1) * S; j++) for (let d = 0; d < D; d++) y[d] += h[j] * W2[j * D + d];
      let s = 0;
      for (let d = 0; d < D; d++) s += y[d] * y[d];
      out[t * E + e] = Math.sqrt(s);
    }
  }
  return out;
}
