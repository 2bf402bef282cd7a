// ONNX GraphProto <-> the graph IR. Reading keeps each proto so that whatever the IR does not model passes through;
// writing reuses the protos of everything unchanged, so a load/save round trip is byte-exact.
import { Graph, Node, Value } from '../ir/graph';
import { GraphProto, NodeProto, TensorProto, ValueInfoProto } from './schema';
import { Tensor } from './tensor';

const has = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

/** Builds the IR from a decoded GraphProto. `tensorOf` turns an initializer proto into a Tensor (views, external refs). */
export function graphFromProto(gp: GraphProto, tensorOf: (t: TensorProto) => Tensor): Graph {
  const g = new Graph(gp.name ?? '');
  (g as unknown as { proto: GraphProto }).proto = gp;
  for (const t of gp.initializer ?? []) {
    const v = g.getOrCreate(t.name ?? '');
    v.tensor = tensorOf(t);
    g.initializers.push(v);
  }
  for (const vi of gp.input ?? []) {
    const v = g.getOrCreate(vi.name ?? '');
    v.info = vi;
    g.inputs.push(v);
  }
  for (const np of gp.node ?? []) {
    const n = new Node(g, np.op_type ?? '', np.domain ?? '', np.name ?? '', np);
    n.attributes = [...(np.attribute ?? [])];
    (np.input ?? []).forEach((name, k) => n.setInput(k, name ? g.getOrCreate(name) : null));
    for (const name of np.output ?? []) {
      if (!name) {
        n.outputs.push(null);
        continue;
      }
      const v = g.getOrCreate(name);
      v.producer = n;
      n.outputs.push(v);
    }
    g.nodes.push(n);
  }
  for (const vi of gp.value_info ?? []) {
    const v = g.getOrCreate(vi.name ?? '');
    if (!v.info) v.info = vi;
    g.valueInfo.push(v);
  }
  for (const vi of gp.output ?? []) {
    const v = g.getOrCreate(vi.name ?? '');
    g.outputs.push(v);
    (v as Value & { outputInfo?: ValueInfoProto }).outputInfo = vi;
    if (!v.info) v.info = vi;
  }
  return g;
}

/** Writes the IR back to a GraphProto, reusing the protos of everything unchanged. */
export function graphToProto(g: Graph, tensorProtoOf: (v: Value) => TensorProto): GraphProto {
  const orig = (g as unknown as { proto?: GraphProto }).proto ?? {};
  const out: GraphProto = { ...orig };
  out.node = g.nodes.map((n) => nodeToProto(n));
  if (g.name || has(orig, 'name')) out.name = g.name;
  out.initializer = g.initializers.map((v) => tensorProtoOf(v));
  out.input = g.inputs.map((v) => ({ ...(v.info ?? {}), name: v.name }));
  out.output = g.outputs.map((v) => ({ ...(((v as Value & { outputInfo?: ValueInfoProto }).outputInfo ?? (v.info && !v.isGraphInput ? v.info : undefined)) ?? {}), name: v.name }));
  out.value_info = g.valueInfo.filter((v) => v.info).map((v) => ({ ...v.info!, name: v.name }));
  for (const k of ['initializer', 'input', 'output', 'value_info', 'node'] as const) {
    if ((out[k] as unknown[]).length === 0 && !has(orig, k)) delete out[k];
  }
  return out;
}

function nodeToProto(n: Node): NodeProto {
  const p: NodeProto = { ...n.proto };
  const inputs = n.inputs.map((v) => v?.name ?? '');
  // Trailing empty inputs are dropped unless the node was read with them.
  while (inputs.length > (n.proto.input?.length ?? 0) && inputs[inputs.length - 1] === '') inputs.pop();
  while (inputs.length < (n.proto.input?.length ?? 0) && n.proto.input![inputs.length] === '') inputs.push('');
  p.input = inputs;
  p.output = n.outputs.map((v) => v?.name ?? '');
  if (n.name || has(n.proto, 'name')) p.name = n.name;
  else delete p.name;
  p.op_type = n.opType;
  if (n.domain || has(n.proto, 'domain')) p.domain = n.domain;
  else delete p.domain;
  p.attribute = n.attributes;
  if (p.attribute.length === 0 && !has(n.proto, 'attribute')) delete p.attribute;
  if (p.input.length === 0 && !has(n.proto, 'input')) delete p.input;
  return p;
}
