// The routers of a converted model replayed on the dense model's FFN inputs. The conversion chooses thresholds and
// reports the expected active fraction from the routers' predictions on the dense (calibration) activations; inside
// the MoE model, layers after the first see the MoE-perturbed residual stream, so the measured fraction drifts from
// the expected one. Replaying the routers on the dense stream gives the conversion's number on any data.
import { MoefyError } from '../errors';
import type { Node, Value } from '../ir/graph';
import type { MoeSite } from '../analysis/var-structure';

export interface RouterWeights {
  D: number;
  width: number;
  E: number;
  /** [D, width] row-major. */
  W1: Float32Array;
  /** [width, E] row-major. */
  W2: Float32Array;
  /** The router squares its Abs output (it was trained on √norm). */
  squared: boolean;
}

const constWeight = (n: Node | null): Float32Array | null => {
  if (!n || n.opType !== 'MatMul') return null;
  const w = n.inputs[1]?.tensor;
  if (!w || w.dims.length !== 2) return null;
  return Float32Array.from(w.numbers());
};

/** MatMul → GELU → MatMul → Abs (→ Mul(·,·), squared) feeding the DynamicMoE node's norms. */
export function routerWeights(site: MoeSite): RouterWeights {
  const norms = site.node.inputs[1];
  let abs = norms?.producer;
  let squared = false;
  if (abs && abs.opType === 'Mul' && abs.inputs[0] && abs.inputs[0] === abs.inputs[1]) {
    squared = true;
    abs = abs.inputs[0].producer;
  }
  const fail = () => new MoefyError(`block ${site.block}: the router is not MatMul → GELU → MatMul → Abs (→ square)`);
  if (!abs || abs.opType !== 'Abs') throw fail();
  const mm2 = abs.inputs[0]?.producer ?? null;
  const W2 = constWeight(mm2);
  if (!W2) throw fail();
  // Walk up from the second MatMul's input to the first MatMul reading the FFN input.
  const seen = new Set<Node>();
  let frontier: Value[] = [mm2!.inputs[0]!];
  let mm1: Node | null = null;
  for (let d = 0; d < 16 && frontier.length && !mm1; d++) {
    const next: Value[] = [];
    for (const v of frontier) {
      const p = v.producer;
      if (!p || seen.has(p)) continue;
      seen.add(p);
      if (p.opType === 'MatMul' && constWeight(p)) {
        mm1 = p;
        break;
      }
      for (const i of p.inputs) if (i && !i.tensor && !i.constantTensor()) next.push(i);
    }
    frontier = next;
  }
  const W1 = constWeight(mm1);
  if (!W1) throw fail();
  const [D, width] = mm1!.inputs[1]!.tensor!.dims;
  const E = mm2!.inputs[1]!.tensor!.dims[1];
  return { D, width, E, W1, W2, squared };
}

/** erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit). */
function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return x >= 0 ? 1 - r : r - 1;
}

/** Experts that run for each row of X [N, D] at threshold t (norms >= t·max, in float32 as the op compares). */
export function replayActive(r: RouterWeights, X: Float32Array, rows: number[], t: number): Int32Array {
  const { D, width, E, W1, W2 } = r;
  const h = new Float64Array(width);
  const p = new Float64Array(E);
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
    const norm = (e: number) => {
      const a = Math.fround(Math.abs(p[e]));
      return r.squared ? Math.fround(a * a) : a;
    };
    let m = 0;
    for (let e = 0; e < E; e++) m = Math.max(m, norm(e));
    const cut = Math.fround(Math.fround(t) * m);
    let on = 0;
    for (let e = 0; e < E; e++) if (norm(e) >= cut) on++;
    out[k] = on;
  });
  return out;
}
