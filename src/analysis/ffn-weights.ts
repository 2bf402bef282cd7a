// An FFN's weights in the layout the op uses (W1 [D, H], W2 [H, D]), whatever the export's (MatMul or Gemm transB).
import type { FfnSite } from './var-structure';

export function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/** fc1 weight as [D, H] and bias [H] (zeros without one). */
export function fc1Weights(s: FfnSite): { W1: Float32Array; B1: Float32Array } {
  const w = s.fc1.weight.tensor!.toFloat32();
  return { W1: s.fc1.transposed ? transpose(w, s.H, s.D) : w, B1: s.fc1.bias?.tensor?.toFloat32() ?? new Float32Array(s.H) };
}

/** fc2 weight as [H, D] and bias [D] (or null). */
export function fc2Weights(s: FfnSite): { W2: Float32Array; B2: Float32Array | null } {
  const w = s.fc2.weight.tensor!.toFloat32();
  return { W2: s.fc2.transposed ? transpose(w, s.D, s.H) : w, B2: s.fc2.bias?.tensor?.toFloat32() ?? null };
}
