// The IR with subgraphs: an If branch reads an outer initializer and an outer node's output by name (no node input
// names them). Pruning keeps both, sorting puts their producer first, and ONNX Runtime runs the result to the values
// computed here.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { Model } from '../src/ir/model';
import { decodeModel, encodeModel } from '../src/onnx/io';
import { AttributeType, DataType, GraphProto, ModelProto, ModelProtoType, NodeProto, TensorProto, ValueInfoProto } from '../src/onnx/schema';

const vec = (name: string): ValueInfoProto => ({ name, type: { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [{ dim_value: 2 }] } } } });
const floats = (name: string, v: number[]): TensorProto => ({ name, dims: [v.length], data_type: DataType.FLOAT, raw_data: new Uint8Array(Float32Array.from(v).buffer) });
const node = (op: string, input: string[], output: string[], extra: Partial<NodeProto> = {}): NodeProto => ({ op_type: op, name: output[0], input, output, ...extra });

const W = [3, 5];

/**
 * out = If(cond) then sq + W else (X − W) + W2, sq = X·X; dead: Neg(X) and the initializer Z. `ifFirst` lists the If
 * node before the node producing sq (a valid graph once sorted).
 */
function model(ifFirst: boolean): Model {
  const thenBranch: GraphProto = { name: 'then', node: [node('Add', ['sq', 'W'], ['then_y'])], output: [vec('then_y')] };
  const elseBranch: GraphProto = {
    name: 'else',
    // A branch inside the branch: the outer W2 is read two levels down.
    node: [node('Sub', ['X', 'W'], ['d']), node('If', ['cond'], ['else_y'], {
      attribute: [
        { name: 'then_branch', type: AttributeType.GRAPH, g: { name: 'inner_then', node: [node('Add', ['d', 'W2'], ['in_y'])], output: [vec('in_y')] } },
        { name: 'else_branch', type: AttributeType.GRAPH, g: { name: 'inner_else', node: [node('Add', ['d', 'W2'], ['in_z'])], output: [vec('in_z')] } },
      ],
    })],
    output: [vec('else_y')],
  };
  const iff = node('If', ['cond'], ['out'], {
    attribute: [{ name: 'then_branch', type: AttributeType.GRAPH, g: thenBranch }, { name: 'else_branch', type: AttributeType.GRAPH, g: elseBranch }],
  });
  const sq = node('Mul', ['X', 'X'], ['sq']);
  const proto: ModelProto = {
    ir_version: 8,
    opset_import: [{ version: 17 }],
    graph: {
      name: 'g',
      node: ifFirst ? [iff, node('Neg', ['X'], ['dead']), sq] : [sq, node('Neg', ['X'], ['dead']), iff],
      initializer: [floats('W', W), floats('W2', [10, 20]), floats('Z', [7, 7])],
      input: [vec('X'), { name: 'cond', type: { tensor_type: { elem_type: DataType.BOOL, shape: { dim: [] } } } }],
      output: [vec('out')],
    },
  };
  return decodeModel(ModelProtoType.encode(proto as never).finish());
}

async function run(m: Model, cond: boolean): Promise<number[]> {
  const s = await ort.InferenceSession.create(encodeModel(m));
  try {
    const r = await s.run({ X: new ort.Tensor('float32', Float32Array.of(2, -1), [2]), cond: new ort.Tensor('bool', Uint8Array.of(cond ? 1 : 0), []) });
    return [...(r.out.data as Float32Array)];
  } finally {
    await s.release();
  }
}

test('a node lists the outer values its subgraphs read, at any depth', () => {
  const m = model(false);
  const iff = m.graph.nodes.find((n) => n.opType === 'If')!;
  assert.deepEqual([...iff.subgraphReads()].sort(), ['W', 'W2', 'X', 'cond', 'sq']);
  assert.deepEqual([...m.graph.nodes.find((n) => n.opType === 'Mul')!.subgraphReads()], []);
});

test('removeDeadNodes keeps what an If branch reads (an outer initializer, an outer node output) and drops the dead', async () => {
  const m = model(false);
  m.graph.removeDeadNodes();
  assert.deepEqual(m.graph.nodes.map((n) => n.opType), ['Mul', 'If']);
  assert.deepEqual(m.graph.initializers.map((v) => v.name), ['W', 'W2']);
  // X = [2, −1]: then X·X + W, else X − W + W2.
  assert.deepEqual(await run(m, true), [4 + 3, 1 + 5]);
  assert.deepEqual(await run(m, false), [2 - 3 + 10, -1 - 5 + 20]);
});

test('toposort puts the producer of a value a subgraph reads before the node holding the subgraph', async () => {
  const m = model(true);
  m.graph.toposort();
  assert.deepEqual(m.graph.nodes.map((n) => n.opType), ['Neg', 'Mul', 'If']);
  m.graph.removeDeadNodes();
  assert.deepEqual(await run(m, true), [7, 6]);
});

test('liveNodes follows subgraph reads', () => {
  const m = model(false);
  const live = m.graph.liveNodes(m.graph.outputs);
  assert.deepEqual([...live].map((n) => n.opType).sort(), ['If', 'Mul']);
});
