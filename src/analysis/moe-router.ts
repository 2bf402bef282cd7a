// A converted model's router subgraph read back (MatMul → GELU → MatMul → Abs, squared when trained on √norm), for
// replaying it on other FFN inputs (eval) and for reporting it.
import type { Node, Value } from '../ir/graph';
import { MOE_INPUT } from '../op';

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
export function routerOf(node: Node): RouterWeights | null {
  const norms = node.inputs[MOE_INPUT.norms];
  let abs = norms?.producer;
  let squared = false;
  if (abs && abs.opType === 'Mul' && abs.inputs[0] && abs.inputs[0] === abs.inputs[1]) {
    squared = true;
    abs = abs.inputs[0].producer;
  }
  if (!abs || abs.opType !== 'Abs') return null;
  const mm2 = abs.inputs[0]?.producer ?? null;
  const W2 = constWeight(mm2);
  if (!W2) return null;
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
  if (!W1) return null;
  const [D, width] = mm1!.inputs[1]!.tensor!.dims;
  const E = mm2!.inputs[1]!.tensor!.dims[1];
  return { D, width, E, W1, W2, squared };
}

