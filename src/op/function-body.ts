// The model-local function body of ai.moefy::DynamicMoE in standard ONNX ops (masked dense compute), so that any
// stock runtime runs a converted model correctly; moefy's kernels replace it where registered. Semantics are the
// op contract of docs/dynamic-moe.md, its routing rules (src/op/routing.ts) written in ops.
import { MoefyError } from '../errors';
import { AttributeType, AttributeProto, FunctionProto, NodeProto } from '../onnx/schema';
import { ActivationKind, GELU_TANH } from './activation';
import { MOE_ATTRIBUTES, MOE_DOMAIN, MOE_INPUTS, MOE_OP, MOE_OUTPUTS } from './contract';
import { DEFAULT_ROUTING, RoutingRule } from './routing';
import { floatToHalf } from '../onnx/half';

const DT_FLOAT = 1, DT_INT32 = 6, DT_INT64 = 7, DT_FLOAT16 = 10;

class Body {
  nodes: NodeProto[] = [];
  private k = 0;
  /** `dataType`: the op's T (float32 or float16); the activation's constants are written in it. */
  constructor(public opset: number, public dataType: number = DT_FLOAT) {}
  op(op: string, inputs: string[], attrs: AttributeProto[] = [], out?: string): string {
    return this.ops(op, inputs, attrs, [out ?? this.fresh()])[0];
  }
  /** A node with several outputs. */
  ops(op: string, inputs: string[], attrs: AttributeProto[], outputs: string[]): string[] {
    const n: NodeProto = { input: inputs, output: outputs, op_type: op };
    if (attrs.length) n.attribute = attrs;
    this.nodes.push(n);
    return outputs;
  }
  fresh(): string {
    return `t${this.k++}`;
  }
  ints(vals: number[]): string {
    return this.op('Constant', [], [{ name: 'value', type: AttributeType.TENSOR, t: { dims: [vals.length], data_type: DT_INT64, raw_data: new Uint8Array(BigInt64Array.from(vals.map(BigInt)).buffer) } }]);
  }
  scalarInt(v: number): string {
    return this.op('Constant', [], [{ name: 'value', type: AttributeType.TENSOR, t: { dims: [], data_type: DT_INT64, raw_data: new Uint8Array(BigInt64Array.of(BigInt(v)).buffer) } }]);
  }
  /** A scalar of the op's T. */
  scalarFloat(v: number): string {
    const raw = this.dataType === DT_FLOAT16 ? new Uint8Array(Uint16Array.of(floatToHalf(v)).buffer) : new Uint8Array(Float32Array.of(v).buffer);
    return this.op('Constant', [], [{ name: 'value', type: AttributeType.TENSOR, t: { dims: [], data_type: this.dataType, raw_data: raw } }]);
  }
  /** A float32 scalar (the routing compares in float32 whatever T is). */
  scalarFloat32(v: number): string {
    return this.op('Constant', [], [{ name: 'value', type: AttributeType.TENSOR, t: { dims: [], data_type: DT_FLOAT, raw_data: new Uint8Array(Float32Array.of(v).buffer) } }]);
  }
  cast(x: string, to: number): string {
    return this.op('Cast', [x], [{ name: 'to', type: AttributeType.INT, i: to }]);
  }
  reduce(op: 'ReduceMax' | 'ReduceSum', x: string, axes: number[], keepdims: number, out?: string): string {
    const kd = { name: 'keepdims', type: AttributeType.INT, i: keepdims };
    // ReduceSum takes axes as an input from opset 13, ReduceMax from opset 18.
    const axesAsInput = op === 'ReduceSum' ? this.opset >= 13 : this.opset >= 18;
    if (axesAsInput) return this.op(op, [x, this.ints(axes)], [kd], out);
    return this.op(op, [x], [{ name: 'axes', type: AttributeType.INTS, ints: axes }, kd], out);
  }
  unsqueeze(x: string, axes: number[]): string {
    return this.op('Unsqueeze', [x, this.ints(axes)]);
  }
}

/** Emits act(x) with standard ops for the given opset. */
export function emitActivation(b: Body, kind: ActivationKind, x: string): string {
  if (kind === 'relu') return b.op('Relu', [x]);
  if (b.opset >= 20) return b.op('Gelu', [x], kind === 'gelu_tanh' ? [{ name: 'approximate', type: AttributeType.STRING, s: Buffer.from('tanh') }] : []);
  if (kind === 'gelu') {
    const e = b.op('Erf', [b.op('Div', [x, b.scalarFloat(Math.SQRT2)])]);
    return b.op('Mul', [b.op('Mul', [x, b.op('Add', [e, b.scalarFloat(1)])]), b.scalarFloat(0.5)]);
  }
  const x3 = b.op('Mul', [x, b.op('Mul', [x, x])]);
  const inner = b.op('Mul', [b.scalarFloat(GELU_TANH.sqrt2OverPi), b.op('Add', [x, b.op('Mul', [b.scalarFloat(GELU_TANH.cubic), x3])])]);
  const t = b.op('Add', [b.scalarFloat(1), b.op('Tanh', [inner])]);
  return b.op('Mul', [b.scalarFloat(0.5), b.op('Mul', [x, t])]);
}

/**
 * The experts that run (bool [B, L, E]) under `rule`, from the norms in float32 [B, L, E] and each position's threshold
 * t (float32 [1, L, 1]): every expert where t ≤ 0 or NaN, the argmax always, else norms[e] >= the rule's cut.
 */
function emitRouting(b: Body, rule: RoutingRule, norms: string, t: string): string {
  const all = b.op('Not', [b.op('Greater', [t, b.scalarFloat32(0)])]);
  const argmax = b.op('ArgMax', [norms], [{ name: 'axis', type: AttributeType.INT, i: -1 }, { name: 'keepdims', type: AttributeType.INT, i: 1 }]);
  const E = b.op('Gather', [b.op('Shape', [norms]), b.scalarInt(2)], [{ name: 'axis', type: AttributeType.INT, i: 0 }]);
  const isArgmax = b.op('Equal', [b.op('Range', [b.scalarInt(0), E, b.scalarInt(1)]), argmax]);
  let cut: string;
  if (rule === 'absolute') cut = t;
  else if (rule === 'relative') cut = b.op('Mul', [t, b.reduce('ReduceMax', norms, [-1], 1)]);
  else {
    // k = clamp(E − floor(t·E), 1, E) in float32 (t ≤ 0 or NaN as 0, so that k stays a number); the cut is the k-th
    // largest norm of the token.
    const tPos = b.op('Where', [b.op('Greater', [t, b.scalarFloat32(0)]), t, b.scalarFloat32(0)]);
    const Ef = b.cast(E, DT_FLOAT);
    const skipped = b.op('Min', [b.op('Floor', [b.op('Mul', [tPos, Ef])]), Ef]);
    const kMinus1 = b.cast(b.op('Sub', [b.op('Max', [b.op('Sub', [Ef, skipped]), b.scalarFloat32(1)]), b.scalarFloat32(1)]), DT_INT64);
    const [sorted] = b.ops('TopK', [norms, b.unsqueeze(E, [0])], [{ name: 'axis', type: AttributeType.INT, i: -1 }], [b.fresh(), b.fresh()]);
    const tokens = b.op('Slice', [b.op('Shape', [norms]), b.ints([0]), b.ints([2])]);
    const idx = b.op('Expand', [kMinus1, b.op('Concat', [tokens, b.ints([1])], [{ name: 'axis', type: AttributeType.INT, i: 0 }])]);
    cut = b.op('GatherElements', [sorted, idx], [{ name: 'axis', type: AttributeType.INT, i: -1 }]);
  }
  return b.op('Or', [b.op('Or', [b.op('GreaterOrEqual', [norms, cut]), isArgmax]), all]);
}

export { Body as FunctionBodyBuilder };

export interface FunctionBodyOptions {
  /** The nodes' `routing` attribute (default relative). */
  routing?: RoutingRule;
  /** The nodes connect skip_bias (all of them: one body serves every node of a model). */
  skipBias?: boolean;
}

/**
 * The function body for the way moefy emits the node: X, norms, W1, B1, W2, B2 and threshold connected (and
 * skip_bias with `skipBias`), scale_index absent (the token's scale comes from the layout). `activation` and
 * `routing` must match the nodes' attributes.
 */
export function dynamicMoeFunction(activation: ActivationKind, opset: number, dataType: number = DT_FLOAT, opts: FunctionBodyOptions = {}): FunctionProto {
  if (opset < 13) throw new MoefyError(`the model's opset ${opset} is below 13, which the DynamicMoE function body needs`);
  const b = new Body(opset, dataType);
  // Experts: act(X·W1 + B1), masked per (token, expert), then ·W2 + B2.
  const h = emitActivation(b, activation, b.op('Add', [b.op('MatMul', ['X', 'W1']), 'B1']));
  // The scale of every token: position in the full sequence (L = Σ pn²) or the one scale with pn² = L.
  const pn = b.op('Constant', [], [{ name: 'value_ints', type: AttributeType.INTS, ref_attr_name: 'patch_nums' }]);
  const tok = b.op('Mul', [pn, pn]);
  const ends = b.op('CumSum', [tok, b.scalarInt(0)]);
  const L = b.op('Gather', [b.op('Shape', ['X']), b.scalarInt(1)], [{ name: 'axis', type: AttributeType.INT, i: 0 }]);
  const pos = b.op('Range', [b.scalarInt(0), L, b.scalarInt(1)]);
  const ge = b.op('Cast', [b.op('GreaterOrEqual', [b.unsqueeze(pos, [1]), ends])], [{ name: 'to', type: AttributeType.INT, i: DT_INT64 }]);
  const posScale = b.reduce('ReduceSum', ge, [1], 0);
  const eq = b.op('Cast', [b.op('Equal', [tok, L])], [{ name: 'to', type: AttributeType.INT, i: DT_FLOAT }]);
  const single = b.op('ArgMax', [eq], [{ name: 'axis', type: AttributeType.INT, i: 0 }, { name: 'keepdims', type: AttributeType.INT, i: 0 }]);
  const isFull = b.op('Equal', [L, b.reduce('ReduceSum', tok, [0], 0)]);
  const scale = b.op('Where', [isFull, posScale, b.op('Expand', [single, b.op('Shape', [pos])])]);
  const thr = b.unsqueeze(b.op('Gather', ['threshold', scale], [{ name: 'axis', type: AttributeType.INT, i: 0 }]), [0, 2]);
  // The selection compares in float32 (threshold is float32 whatever T is), as the kernels do.
  const normsF = dataType === DT_FLOAT ? 'norms' : b.cast('norms', DT_FLOAT);
  const runs = emitRouting(b, opts.routing ?? DEFAULT_ROUTING, normsF, thr);
  const run = b.cast(runs, DT_FLOAT);
  b.op('Cast', [b.reduce('ReduceSum', run, [-1], 0)], [{ name: 'to', type: AttributeType.INT, i: DT_INT32 }], 'active');
  const perExpert = b.op('Reshape', [h, b.op('Concat', [b.op('Shape', ['norms']), b.ints([-1])], [{ name: 'axis', type: AttributeType.INT, i: 0 }])]);
  const runT = dataType === DT_FLOAT ? run : b.cast(runs, dataType);
  const masked = b.op('Reshape', [b.op('Mul', [perExpert, b.unsqueeze(runT, [3])]), b.op('Shape', [h])]);
  const experts = b.op('MatMul', [masked, 'W2']);
  // Skipped-expert compensation: Σ over the experts that did not run of skip_bias[e] (nothing when all run).
  if (opts.skipBias) b.op('Add', [b.op('Add', [experts, 'B2']), b.op('MatMul', [b.cast(b.op('Not', [runs]), dataType), 'skip_bias'])], [], 'Y');
  else b.op('Add', [experts, 'B2'], [], 'Y');
  return {
    name: MOE_OP,
    domain: MOE_DOMAIN,
    input: [...MOE_INPUTS],
    output: [...MOE_OUTPUTS],
    attribute: [...MOE_ATTRIBUTES],
    node: b.nodes,
    opset_import: [{ domain: '', version: opset }],
    doc_string: 'DynamicMoE in standard ops (masked dense compute): correct on any runtime; moefy\'s kernels run only the selected experts.',
  };
}
