// The routers of a converted model replayed on the dense model's FFN inputs. The conversion chooses thresholds and
// reports the expected active fraction from the routers' predictions on the dense (calibration) activations; inside
// the MoE model, layers after the first see the MoE-perturbed residual stream, so the measured fraction drifts from
// the expected one. Replaying the routers on the dense stream gives the conversion's number on any data.
import { routerNorms, type RouterWeights } from '../analysis/router-graph';

export type { RouterWeights };

/** Experts that run for each row of X [N, D] at threshold t (norms >= t·max, in float32 as the op compares). */
export function replayActive(r: RouterWeights, X: Float32Array, rows: number[], t: number): Int32Array {
  const { E } = r;
  const normsOf = routerNorms(r);
  const out = new Int32Array(rows.length);
  rows.forEach((row, k) => {
    const norms = normsOf(X, row);
    let m = 0;
    for (let e = 0; e < E; e++) m = Math.max(m, norms[e]);
    const cut = Math.fround(Math.fround(t) * m);
    let on = 0;
    for (let e = 0; e < E; e++) if (norms[e] >= cut) on++;
    out[k] = on;
  });
  return out;
}
