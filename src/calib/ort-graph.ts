// A tiny builder for the small ONNX graphs the calibration code runs in onnxruntime-node (distance matrices,
// expert norms, the router's training step). Built on the IR (Graph/Model) and encoded with encodeModel.
import * as ort from 'onnxruntime-node';
import { Graph, Value, attr } from '../ir/graph';
import { Model } from '../ir/model';
import { graphToProto } from '../onnx/ir-proto';
import { encodeModel } from '../onnx/io';
import { AttributeType, DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';
import type { ActivationKind } from '../op';

export type Dim = number | string;

/** The default-domain opset of the graphs built here. */
export const GRAPH_OPSET = 20;

export class GraphBuilder {
  readonly graph: Graph;
  private count = 0;

  /** parent: a Loop body's builder; its constants live in the parent graph (outer scope), its names are prefixed. */
  constructor(name: string, private readonly parent?: GraphBuilder) {
    this.graph = new Graph(name);
  }

  /** A builder for a Loop body of this graph (see loop()). */
  body(name: string): GraphBuilder {
    return new GraphBuilder(name, this);
  }

  /** A value of the enclosing graph, used by name inside this body. */
  outer(v: Value): Value {
    return this.graph.getOrCreate(v.name);
  }

  /**
   * ONNX Loop: inputs trip count M (int64 scalar), cond (bool scalar) and the initial loop-carried values; outputs
   * the final carried values, then the scan outputs stacked over iterations. body(i, cond, ...carried) must output
   * (cond, ...carried, ...scans).
   */
  loop(M: Value, cond: Value | null, carried: Value[], body: GraphBuilder, scans: number, outNames: string[]): Value[] {
    const g = graphToProto(body.graph, () => {
      throw new Error('loop bodies carry no initializers');
    });
    const outs = carried.length + scans;
    if (outNames.length !== outs) throw new Error(`loop: ${outs} outputs, ${outNames.length} names`);
    const n = this.graph.addNode({ op: 'Loop', inputs: [M, cond, ...carried], outputs: outNames, attrs: [{ name: 'body', type: AttributeType.GRAPH, g }], name: `Loop_${this.count++}` });
    return n.outputs as Value[];
  }

  input(name: string, dims: Dim[], elemType: number = DataType.FLOAT): Value {
    const v = this.graph.getOrCreate(name);
    v.info = { name, type: { tensor_type: { elem_type: elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) } } } };
    this.graph.inputs.push(v);
    return v;
  }

  output(v: Value, name?: string, elemType: number = DataType.FLOAT): Value {
    let out = v;
    if (name && name !== v.name) out = this.op('Identity', [v], {}, name);
    out.info = { name: out.name, type: { tensor_type: { elem_type: elemType } } };
    this.graph.outputs.push(out);
    return out;
  }

  constF(data: ArrayLike<number> | Float32Array, dims: number[], hint = 'c'): Value {
    if (this.parent) return this.outer(this.parent.constF(data, dims, hint));
    const a = data instanceof Float32Array ? data : Float32Array.from(data);
    return this.graph.addInitializer(hint, Tensor.fromFloat32(a, dims));
  }

  constI64(data: number[], dims: number[] = [data.length], hint = 'shape'): Value {
    if (this.parent) return this.outer(this.parent.constI64(data, dims, hint));
    return this.graph.addInitializer(hint, Tensor.fromInt64(data, dims));
  }

  scalar(x: number, hint = 's'): Value {
    return this.constF([x], [], hint);
  }

  /** Adds a node with one output; attrs as {name: number|string|number[]} (ints when integral, floats with `f:` prefix). */
  op(type: string, inputs: (Value | null)[], attrs: Record<string, number | string | number[]> = {}, outName?: string): Value {
    const list = Object.entries(attrs).map(([k, v]) => {
      if (k.startsWith('f:')) return Array.isArray(v) ? attr.floats(k.slice(2), v) : attr.float(k.slice(2), v as number);
      if (typeof v === 'string') return attr.string(k, v);
      if (Array.isArray(v)) return attr.ints(k, v);
      return attr.int(k, v);
    });
    const name = outName ?? this.scoped(`${type.toLowerCase()}_${this.count++}`);
    const n = this.graph.addNode({ op: type, inputs, outputs: [name], attrs: list, name: this.scoped(`${type}_${this.count++}`) });
    return n.output(0);
  }

  /** A name for nodes and values of this graph: a Loop body's are prefixed with its name (unique across scopes). */
  scoped(hint: string): string {
    return this.parent ? `${this.graph.name}/${hint}` : hint;
  }

  encode(opset = GRAPH_OPSET): Uint8Array {
    const model = new Model({ ir_version: 10, producer_name: 'moefy-calib', opset_import: [{ domain: '', version: opset }] } as never, this.graph);
    return encodeModel(model);
  }

  async session(opts: ort.InferenceSession.SessionOptions = {}): Promise<ort.InferenceSession> {
    return ort.InferenceSession.create(this.encode(), { graphOptimizationLevel: 'all', ...opts });
  }
}

export function f32(data: Float32Array, dims: number[]): ort.Tensor {
  return new ort.Tensor('float32', data, dims);
}

export function f32Scalar(x: number): ort.Tensor {
  return new ort.Tensor('float32', Float32Array.of(x), []);
}

/** Applies an FFN activation by name: relu, gelu_tanh (tanh approximation), gelu (exact erf). */
export function activationOp(b: GraphBuilder, x: Value, activation: ActivationKind): Value {
  if (activation === 'relu') return b.op('Relu', [x]);
  if (activation === 'gelu_tanh') return b.op('Gelu', [x], { approximate: 'tanh' });
  return b.op('Gelu', [x]);
}
