/**
 * Tiny ONNX models for runtime tests and benchmarks: one DynamicMoE node, or the dense FFN it replaces.
 * Built directly with onnx-proto (fine for small graphs; the converter uses the project IR).
 */
import { onnx } from 'onnx-proto';
import type { Activation } from '../../src/runtime/reference';
import { dynamicMoeFunction, RoutingRule } from '../../src/op';
import { ModelProtoType } from '../../src/onnx/schema';

const FLOAT = 1;
const FLOAT16 = 10;
const INT64 = 7;
const INT32 = 6;

type Dim = number | string | null; // null: unknown and unnamed

function valueInfo(name: string, elemType: number, dims: Dim[] | null): onnx.IValueInfoProto {
  const t: onnx.TypeProto.ITensor = { elemType };
  if (dims) t.shape = { dim: dims.map((d) => (d === null ? {} : typeof d === 'number' ? { dimValue: d } : { dimParam: d })) };
  return { name, type: { tensorType: t } };
}

function floatInit(name: string, dims: number[], data: Float32Array): onnx.ITensorProto {
  return {
    name,
    dims,
    dataType: FLOAT,
    rawData: new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)),
  };
}

export interface MoeModelWeights {
  W1: Float32Array; // [D, E*S]
  B1: Float32Array; // [E*S]
  W2: Float32Array; // [E*S, D]
  B2?: Float32Array; // [D]
}

/** float16 weights: IEEE binary16 bits. */
export interface MoeModelWeightsF16 {
  W1: Uint16Array;
  B1: Uint16Array;
  W2: Uint16Array;
  B2?: Uint16Array;
}

function halfInit(name: string, dims: number[], data: Uint16Array): onnx.ITensorProto {
  return { name, dims, dataType: FLOAT16, rawData: new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)) };
}

export interface MoeModelSpec {
  D: number;
  E: number;
  S: number;
  activation?: Activation;
  patchNums: number[];
  threshold?: number[];
  /** the `routing` attribute (absent: the op's default) */
  routing?: RoutingRule;
  /** skip_bias [E, D] as an initializer (float16 models: binary16 bits) */
  skipBias?: Float32Array | Uint16Array;
  /** skip_bias [E, D] as a graph input */
  withSkipBiasInput?: boolean;
  /** Weights as initializers; when absent W1, B1, W2 (and B2 if withB2) are graph inputs. */
  weights?: MoeModelWeights | MoeModelWeightsF16;
  /** T of the op (X, norms, W1, B1, W2, B2, Y): float32 (default) or float16 (weights as Uint16Array bits) */
  dtype?: 'float32' | 'float16';
  withB2?: boolean;
  /** scale_index (int64 scalar) as a graph input */
  withScaleIndex?: boolean;
  /** threshold (float [num scales]) as a graph input */
  withThresholdInput?: boolean;
  /** with withThresholdInput: also an initializer holding these defaults (an overridable initializer) */
  thresholdDefault?: number[];
  /** expose the `active` output */
  withActive?: boolean;
  /**
   * attach a model-local function body for DynamicMoE that is deliberately NOT the op's semantics (Y = X), so a test
   * can tell whether the registered kernel or the function body ran
   */
  withMarkerFunctionBody?: boolean;
  /**
   * attach the op's own model-local function body (src/op, for this routing and skip_bias), as a converted model
   * carries it; needs B2 and the threshold input
   */
  withFunctionBody?: boolean;
  /** also output Shape(Y) as `Y_shape` (checks that shape inference does not invent dims) */
  withShapeOutput?: boolean;
  /** how to write the dims of X/norms inputs: symbolic by default (null: unknown, unnamed) */
  batchDim?: Dim;
  seqDim?: Dim;
}

function encode(graph: onnx.IGraphProto, opsets: onnx.IOperatorSetIdProto[]): Uint8Array {
  const model: onnx.IModelProto = {
    irVersion: 8,
    producerName: 'moefy-test',
    opsetImport: opsets,
    graph,
  };
  return onnx.ModelProto.encode(model).finish();
}

/** A model holding one ai.moefy::DynamicMoE node. Inputs: X, norms [, W1, B1, W2, B2] [, scale_index] [, threshold]. */
export function buildDynamicMoeModel(spec: MoeModelSpec): Uint8Array {
  const { D, E, S } = spec;
  const Bd = spec.batchDim ?? 'B';
  const Ld = spec.seqDim ?? 'L';
  const T = spec.dtype === 'float16' ? FLOAT16 : FLOAT;
  const init = (name: string, dims: number[], data: Float32Array | Uint16Array) =>
    data instanceof Uint16Array ? halfInit(name, dims, data) : floatInit(name, dims, data);
  const inputs: onnx.IValueInfoProto[] = [valueInfo('X', T, [Bd, Ld, D]), valueInfo('norms', T, [Bd, Ld, E])];
  const inits: onnx.ITensorProto[] = [];
  const withB2 = spec.weights ? spec.weights.B2 !== undefined : !!spec.withB2;
  if (spec.weights) {
    inits.push(init('W1', [D, E * S], spec.weights.W1));
    inits.push(init('B1', [E * S], spec.weights.B1));
    inits.push(init('W2', [E * S, D], spec.weights.W2));
    if (spec.weights.B2) inits.push(init('B2', [D], spec.weights.B2));
  } else {
    inputs.push(valueInfo('W1', T, [D, E * S]), valueInfo('B1', T, [E * S]), valueInfo('W2', T, [E * S, D]));
    if (withB2) inputs.push(valueInfo('B2', T, [D]));
  }
  if (spec.withScaleIndex) inputs.push(valueInfo('scale_index', INT64, []));
  if (spec.withThresholdInput) {
    inputs.push(valueInfo('threshold', FLOAT, [spec.patchNums.length]));
    if (spec.thresholdDefault) inits.push(floatInit('threshold', [spec.patchNums.length], Float32Array.from(spec.thresholdDefault)));
  }
  const withSkip = spec.skipBias !== undefined || !!spec.withSkipBiasInput;
  if (spec.skipBias) inits.push(init('skip_bias', [E, D], spec.skipBias));
  else if (spec.withSkipBiasInput) inputs.push(valueInfo('skip_bias', T, null)); // no shape: the kernel checks it
  const nodeInputs = ['X', 'norms', 'W1', 'B1', 'W2', withB2 ? 'B2' : '', spec.withScaleIndex ? 'scale_index' : '', spec.withThresholdInput ? 'threshold' : '', withSkip ? 'skip_bias' : ''];
  while (nodeInputs[nodeInputs.length - 1] === '') nodeInputs.pop();
  const attrs: onnx.IAttributeProto[] = [
    { name: 'num_experts', type: onnx.AttributeProto.AttributeType.INT, i: E },
    { name: 'activation', type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode(spec.activation ?? 'relu') },
    { name: 'patch_nums', type: onnx.AttributeProto.AttributeType.INTS, ints: spec.patchNums },
  ];
  if (spec.threshold) attrs.push({ name: 'threshold', type: onnx.AttributeProto.AttributeType.FLOATS, floats: spec.threshold });
  if (spec.routing) attrs.push({ name: 'routing', type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode(spec.routing) });
  const outputs = [valueInfo('Y', T, [Bd, Ld, D])];
  const nodeOutputs = ['Y'];
  if (spec.withActive) {
    outputs.push(valueInfo('active', INT32, [Bd, Ld]));
    nodeOutputs.push('active');
  }
  const nodes: onnx.INodeProto[] = [{ name: 'moe', opType: 'DynamicMoE', domain: 'ai.moefy', input: nodeInputs, output: nodeOutputs, attribute: attrs }];
  if (spec.withShapeOutput) {
    // Shape feeds an Add (not a graph output itself), so that constant folding may fold it when dims look static.
    nodes.push({ name: 'shape', opType: 'Shape', input: ['Y'], output: ['Y_shape0'] });
    nodes.push({ name: 'shape_add', opType: 'Add', input: ['Y_shape0', 'zero3'], output: ['Y_shape'] });
    inits.push({ name: 'zero3', dims: [3], dataType: INT64, rawData: new Uint8Array(24) });
    outputs.push(valueInfo('Y_shape', INT64, [3]));
  }
  const graph: onnx.IGraphProto = {
    name: 'dynamic_moe',
    node: nodes,
    input: inputs,
    output: outputs,
    initializer: inits,
  };
  const opsets = [
    { domain: '', version: 17 },
    { domain: 'ai.moefy', version: 1 },
  ];
  if (spec.withFunctionBody) {
    if (!withB2 || !spec.withThresholdInput) throw new Error('the function body needs B2 and the threshold input');
    const m = ModelProtoType.toObject(ModelProtoType.decode(encode(graph, opsets)), { longs: Number });
    m.functions = [dynamicMoeFunction(spec.activation ?? 'relu', 17, T, { routing: spec.routing, skipBias: withSkip })];
    return ModelProtoType.encode(ModelProtoType.fromObject(m)).finish();
  }
  if (!spec.withMarkerFunctionBody) return encode(graph, opsets);
  const fn: onnx.IFunctionProto = {
    name: 'DynamicMoE',
    domain: 'ai.moefy',
    input: ['X', 'norms', 'W1', 'B1', 'W2', 'B2', 'scale_index', 'threshold'],
    output: spec.withActive ? ['Y', 'active'] : ['Y'],
    attribute: ['num_experts', 'activation', 'patch_nums', 'threshold'],
    node: [
      { opType: 'Identity', input: ['X'], output: ['Y'] },
      ...(spec.withActive
        ? [
            { opType: 'ReduceMax', input: ['norms'], output: ['m'], attribute: [{ name: 'axes', type: onnx.AttributeProto.AttributeType.INTS, ints: [2] }, { name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 0 }] },
            { opType: 'Cast', input: ['m'], output: ['active'], attribute: [{ name: 'to', type: onnx.AttributeProto.AttributeType.INT, i: INT32 }] },
          ]
        : []),
    ],
    opsetImport: [{ domain: '', version: 17 }],
  };
  return onnx.ModelProto.encode({ irVersion: 8, producerName: 'moefy-test', opsetImport: opsets, graph, functions: [fn] }).finish();
}

/** The dense FFN: Y = Relu(X·W1 + B1)·W2 + B2 (MatMul-Add-Relu-MatMul-Add), weights as initializers. */
export function buildDenseFfnModel(D: number, H: number, w: { W1: Float32Array; B1: Float32Array; W2: Float32Array; B2: Float32Array }): Uint8Array {
  const graph: onnx.IGraphProto = {
    name: 'dense_ffn',
    node: [
      { name: 'mm1', opType: 'MatMul', input: ['X', 'W1'], output: ['h0'] },
      { name: 'add1', opType: 'Add', input: ['h0', 'B1'], output: ['h1'] },
      { name: 'relu', opType: 'Relu', input: ['h1'], output: ['h2'] },
      { name: 'mm2', opType: 'MatMul', input: ['h2', 'W2'], output: ['y0'] },
      { name: 'add2', opType: 'Add', input: ['y0', 'B2'], output: ['Y'] },
    ],
    input: [valueInfo('X', FLOAT, ['B', 'L', D])],
    output: [valueInfo('Y', FLOAT, ['B', 'L', D])],
    initializer: [floatInit('W1', [D, H], w.W1), floatInit('B1', [H], w.B1), floatInit('W2', [H, D], w.W2), floatInit('B2', [D], w.B2)],
  };
  return encode(graph, [{ domain: '', version: 17 }]);
}

/** The project's seeded PRNG, for test data. */
export { rng } from '../../src/calib/random';

/** Float32Array of n values uniform in [-scale, scale). */
export function randomArray(r: () => number, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}
export { INT64, INT32, FLOAT, FLOAT16 };
