// The routers of a converted model replayed on the dense model's FFN inputs. The conversion chooses thresholds and
// reports the expected active fraction from the routers' predictions on the dense (calibration) activations; inside
// the MoE model, layers after the first see the MoE-perturbed residual stream, so the measured fraction drifts from
// the expected one. Replaying the routers on the dense stream gives the conversion's number on any data.
import { routerNorms, type RouterWeights } from '../analysis/router-graph';
import { routeToken, type RoutingRule } from '../op';

export type { RouterWeights };

/** Experts that run for each row of X [N, D] at threshold t under the node's rule (the op's, src/op/routing.ts). */
export function replayActive(r: RouterWeights, rule: RoutingRule, X: Float32Array, rows: number[], t: number): Int32Array {
  const { E } = r;
  const normsOf = routerNorms(r);
  const out = new Int32Array(rows.length);
  rows.forEach((row, k) => {
    out[k] = routeToken(normsOf(X, row), 0, E, rule, t);
  });
  return out;
}
