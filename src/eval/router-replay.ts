// The routers of a converted model replayed on the dense model's FFN inputs. The conversion chooses thresholds and
// reports the expected active fraction from the routers' predictions on the dense (calibration) activations; inside
// the MoE model, layers after the first see the MoE-perturbed residual stream, so the measured fraction drifts from
// the expected one. Replaying the routers on the dense stream gives the conversion's number on any data.
import type { RouterWeights } from '../analysis/moe-router';
import { DEFAULT_ROUTING, erf, routeToken } from '../op';

export type { RouterWeights };

/** Experts that run for each row of X [N, D] at threshold t (the op's routing rule, src/op/routing.ts). */
export function replayActive(r: RouterWeights, X: Float32Array, rows: number[], t: number): Int32Array {
  const { D, width, E, W1, W2 } = r;
  const h = new Float64Array(width);
  const p = new Float64Array(E);
  const norms = new Float32Array(E);
  const out = new Int32Array(rows.length);
  rows.forEach((row, k) => {
    h.fill(0);
    const o = row * D;
    for (let d = 0; d < D; d++) {
      const x = X[o + d];
      if (x === 0) continue;
      const wo = d * width;
      for (let j = 0; j < width; j++) h[j] += x * W1[wo + j];
    }
    for (let j = 0; j < width; j++) h[j] = 0.5 * h[j] * (1 + erf(h[j] / Math.SQRT2));
    p.fill(0);
    for (let j = 0; j < width; j++) {
      const v = h[j];
      const wo = j * E;
      for (let e = 0; e < E; e++) p[e] += v * W2[wo + e];
    }
    for (let e = 0; e < E; e++) {
      const a = Math.fround(Math.abs(p[e]));
      norms[e] = r.squared ? a * a : a;
    }
    out[k] = routeToken(norms, 0, E, DEFAULT_ROUTING, t);
  });
  return out;
}
