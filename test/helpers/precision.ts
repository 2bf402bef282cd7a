// Test helpers for half-precision models, written against the ONNX IR only (not moefy's passes):
// - widenToFloat32: a float16 model's float32 twin (every float16 tensor widened exactly, Casts to float16 made
//   Casts to float32, inputs/outputs float32): ONNX Runtime's "float32 run of the original" that a float16
//   conversion's error is measured against.
// - castToFloat16: a float32 model computing in float16 inside (weights and constants rounded to float16, as
//   model.half() does), its float inputs cast to float16 on entry and its float outputs cast back to float32 on exit
//   (VAR's get_logits .float()), so it takes and gives the same tensors as the original.
import { attr, Graph, Node, Value } from '../../src/ir/graph';
import { Model } from '../../src/ir/model';
import { AttributeProto, DataType, TensorProto } from '../../src/onnx/schema';
import { Tensor } from '../../src/onnx/tensor';

function retype(t: Tensor, to: number): Tensor {
  return Tensor.fromFloats(t.toFloat32(), t.dims, to);
}

function protoOf(t: Tensor): TensorProto {
  return { dims: t.dims, data_type: t.dataType, raw_data: t.bytes() };
}

/** Rewrites float tensors of type `from` into `to` in initializers, Constant nodes and Cast targets. */
function convertTensors(g: Graph, from: number, to: number): void {
  for (const v of g.initializers) if (v.tensor!.dataType === from) v.tensor = retype(v.tensor!, to);
  for (const n of g.nodes) {
    if (n.opType === 'Constant') {
      const a = n.attr('value');
      if (a?.t && a.t.data_type === from) n.setAttr({ ...a, t: protoOf(retype(n.output(0).constantTensor()!, to)) } as AttributeProto);
      const f = n.attr('value_float');
      if (f && from === DataType.FLOAT) {
        n.attributes = n.attributes.filter((x) => x.name !== 'value_float');
        n.setAttr({ name: 'value', type: 4, t: protoOf(Tensor.fromFloats(Float32Array.of(f.f ?? 0), [], to)) } as AttributeProto);
      }
    }
    if (n.opType === 'Cast' && n.attrInt('to') === from) n.setAttr(attr.int('to', to));
  }
  g.valueInfo = [];
}

const setElem = (v: Value, t: number) => {
  if (v.info?.type?.tensor_type) v.info.type.tensor_type.elem_type = t;
};

export function widenToFloat32(model: Model): Model {
  const g = model.graph;
  convertTensors(g, DataType.FLOAT16, DataType.FLOAT);
  for (const v of [...g.inputs, ...g.outputs]) if (v.elemType() === DataType.FLOAT16) setElem(v, DataType.FLOAT);
  return model;
}

export function castToFloat16(model: Model): Model {
  const g = model.graph;
  convertTensors(g, DataType.FLOAT, DataType.FLOAT16);
  const first: Node | undefined = g.nodes[0];
  for (const x of g.inputs) {
    if (x.tensor || x.elemType() !== DataType.FLOAT) continue;
    const uses = x.uses();
    const c = g.addNode({ op: 'Cast', inputs: [x], outputs: [`${x.name}_fp16`], attrs: [attr.int('to', DataType.FLOAT16)], name: `${x.name}_to_fp16`, before: first });
    for (const u of uses) u.node.setInput(u.index, c.output(0));
  }
  for (const y of g.outputs) {
    if (y.elemType() !== DataType.FLOAT || !y.producer) continue;
    const p = y.producer;
    const h = g.createValue(`${y.name}_fp16`);
    p.outputs[p.outputs.indexOf(y)] = h;
    h.producer = p;
    y.producer = null;
    for (const u of y.uses()) u.node.setInput(u.index, h);
    g.addNode({ op: 'Cast', inputs: [h], outputs: [y], attrs: [attr.int('to', DataType.FLOAT)], name: `${y.name}_to_fp32` });
  }
  return model;
}
