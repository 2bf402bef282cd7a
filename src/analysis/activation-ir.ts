// Activations written into the IR with standard ops (the router's GELU, reference FFNs for reports); patterns.ts
// reads the exporters' forms of them.
import { ActivationKind, GELU_TANH } from '../op';
import { attr, Graph, Value } from '../ir/graph';
import { DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';

/** `dataType`: the float type of x (constants are written in it: float32 or float16). */
export function emitActivationIR(g: Graph, kind: ActivationKind, x: Value, opset: number, hint = 'act', dataType: number = DataType.FLOAT): Value {
  const c = (v: number) => g.addInitializer(`${hint}_c`, Tensor.fromFloats(Float32Array.of(v), [], dataType));
  const op = (o: string, inputs: Value[], attrs = [] as ReturnType<typeof attr.int>[]) => {
    // Node names must be unique in a graph: name each node after its (unique) output.
    const out = g.createValue(`${hint}/${o}`);
    return g.addNode({ op: o, inputs, attrs, outputs: [out], name: out.name }).output(0);
  };
  if (kind === 'relu') return op('Relu', [x]);
  if (opset >= 20) return op('Gelu', [x], kind === 'gelu_tanh' ? [attr.string('approximate', 'tanh')] : []);
  if (kind === 'gelu') {
    const e = op('Erf', [op('Div', [x, c(Math.SQRT2)])]);
    return op('Mul', [op('Mul', [x, op('Add', [e, c(1)])]), c(0.5)]);
  }
  const x3 = op('Mul', [x, op('Mul', [x, x])]);
  const inner = op('Mul', [c(GELU_TANH.sqrt2OverPi), op('Add', [x, op('Mul', [c(GELU_TANH.cubic), x3])])]);
  return op('Mul', [c(0.5), op('Mul', [x, op('Add', [c(1), op('Tanh', [inner])])])]);
}
