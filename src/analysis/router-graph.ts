// The router's graph form, written and read back here only: x [.., D] → MatMul W1 [D, width] → GELU (exact, erf) →
// MatMul W2 [width, E] → Abs, then Mul(·,·) (the square) when it regresses √norm. The insert pass writes it into the
// converted model (writeRouter), router training builds its forward into the training graphs (routerOps), the
// analysis reads it back from a converted model (readRouter, routerNodes), and routerNorms is its plain TypeScript
// reference (the router replay). A change of the router is a change of this module.
import type { Graph, Node, Value } from '../ir/graph';
import { DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';
import { erf, isDynamicMoe, MOE_INPUT } from '../op';
import { emitActivationIR } from './activation-ir';

/** A router's weights (float32, whatever the model's precision) and sizes. */
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

/** The forward's values: the backward of router training reads pre, hidden and out. */
export interface RouterValues {
  /** x·W1 */
  pre: Value;
  /** GELU(pre) */
  hidden: Value;
  /** hidden·W2 */
  out: Value;
  /** |out|, squared when the router is. */
  norms: Value;
}

export interface RouterGraphOptions {
  /** The graph's default-domain opset (GELU is one `Gelu` op from 20 on, standard ops before). */
  opset: number;
  /** Float type of x and the weights (constants are written in it); default float32. */
  dataType?: number;
  /** Prefix of the node and value names. */
  name: string;
  /** Put the first MatMul before this node (the others are appended: a toposort orders them). */
  before?: Node;
  /** Name of the norms value (default `${name}/norms`). */
  normsName?: string;
}

/** The router's ops on x with weights w1 [D, width] and w2 [width, E] (initializers or graph inputs). */
export function routerOps(g: Graph, x: Value, w1: Value, w2: Value, squared: boolean, o: RouterGraphOptions): RouterValues {
  const p = o.name;
  const normsName = o.normsName ?? `${p}/norms`;
  const pre = g.addNode({ op: 'MatMul', inputs: [x, w1], outputs: [`${p}/MatMul`], name: `${p}/MatMul`, before: o.before }).output(0);
  const hidden = emitActivationIR(g, 'gelu', pre, o.opset, `${p}/gelu`, o.dataType ?? DataType.FLOAT);
  const out = g.addNode({ op: 'MatMul', inputs: [hidden, w2], outputs: [`${p}/MatMul_1`], name: `${p}/MatMul_1` }).output(0);
  let norms = g.addNode({ op: 'Abs', inputs: [out], outputs: [squared ? `${p}/Abs` : normsName], name: `${p}/Abs` }).output(0);
  if (squared) norms = g.addNode({ op: 'Mul', inputs: [norms, norms], outputs: [normsName], name: `${p}/Square` }).output(0);
  return { pre, hidden, out, norms };
}

/**
 * The router's last MatMul weights [width, E] with its norms multiplied by f > 0: W2·f, or W2·√f when the router
 * squares its output (|h·W2·√f|² = f·|h·W2|²). How a per-layer normalisation is folded into the router.
 */
export function scaledNormsW2(W2: Float32Array, squared: boolean, f: number): Float32Array {
  const g = squared ? Math.sqrt(f) : f;
  return W2.map((v) => v * g);
}

/** Writes a trained router reading x into g: its weights as initializers `${name}.W1`, `${name}.W2`, then its ops. */
export function writeRouter(g: Graph, x: Value, r: RouterWeights, o: RouterGraphOptions): Value {
  const DT = o.dataType ?? DataType.FLOAT;
  const w1 = g.addInitializer(`${o.name}.W1`, Tensor.fromFloats(r.W1, [r.D, r.width], DT));
  const w2 = g.addInitializer(`${o.name}.W2`, Tensor.fromFloats(r.W2, [r.width, r.E], DT));
  return routerOps(g, x, w1, w2, r.squared, o).norms;
}

const constWeight = (n: Node | null): Float32Array | null => {
  if (!n || n.opType !== 'MatMul') return null;
  const w = n.inputs[1]?.tensor;
  if (!w || w.dims.length !== 2) return null;
  return Float32Array.from(w.numbers());
};

/** The router that computes `norms`, read back; null when the subgraph is not in the router's form. */
export function readRouter(norms: Value): RouterWeights | null {
  let abs = norms.producer;
  let squared = false;
  if (abs && abs.opType === 'Mul' && abs.inputs[0] && abs.inputs[0] === abs.inputs[1]) {
    squared = true;
    abs = abs.inputs[0].producer;
  }
  if (!abs || abs.opType !== 'Abs') return null;
  const mm2 = abs.inputs[0]?.producer ?? null;
  const W2 = constWeight(mm2);
  if (!W2) return null;
  // Walk up from the second MatMul's input (through the GELU, one op or its standard-op form) to the first MatMul.
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

/** A DynamicMoE node's router, whatever its form: the nodes between the node's X and its `norms` input. */
export function routerNodes(moe: Node): Set<Node> {
  const x = moe.inputs[MOE_INPUT.X];
  const seen = new Set<Node>();
  const stack = [moe.inputs[MOE_INPUT.norms]];
  while (stack.length) {
    const v = stack.pop();
    const p = v?.producer;
    if (!p || seen.has(p) || v === x) continue;
    seen.add(p);
    for (const i of p.inputs) if (i && !i.tensor && i !== x) stack.push(i);
  }
  return seen;
}

/** Whether v reaches a DynamicMoE node's `norms` input through at most a few elementwise ops (a router's last MatMul). */
export function feedsRouterNorms(v: Value, depth = 4): boolean {
  for (const u of v.uses()) {
    if (isDynamicMoe(u.node) && u.index === MOE_INPUT.norms) return true;
    if (depth > 0 && ['Abs', 'Mul', 'Relu', 'Sqrt', 'Identity'].includes(u.node.opType) && u.node.outputs[0] && feedsRouterNorms(u.node.outputs[0], depth - 1)) return true;
  }
  return false;
}

/**
 * The router's norms of one row of X [N, D], in plain TypeScript: float64 sums, each norm rounded to float32 as the
 * graph's Abs (and square) output is. Returns a function that reuses its output array.
 */
export function routerNorms(r: RouterWeights): (X: Float32Array, row: number) => Float32Array {
  const { D, width, E, W1, W2 } = r;
  const h = new Float64Array(width);
  const p = new Float64Array(E);
  const norms = new Float32Array(E);
  return (X, row) => {
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
      norms[e] = r.squared ? Math.fround(a * a) : a;
    }
    return norms;
  };
}
