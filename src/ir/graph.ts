// The graph IR: small and mutable. A Value knows its producer and its uses; a Node knows its input and output
// Values. Everything a pass does not touch keeps the proto fields it was read with, so a round trip is exact.
// Subgraphs (If branches, Loop and Scan bodies) stay protos inside their node's attributes: the values of this graph
// they read by name are the node's subgraph reads, which keep those values and their producers alive.
import { Tensor, tensorFromInlineProto } from '../onnx/tensor';
import { AttributeProto, AttributeType, GraphProto, NodeProto, TypeProto, ValueInfoProto } from '../onnx/schema';

export interface Use {
  node: Node;
  index: number;
}

export class Value {
  producer: Node | null = null;
  /** Live list of uses, kept by Node.setInput; read it through uses(). */
  private useList: Use[] = [];
  /** Set for initializers. */
  tensor?: Tensor;
  /** value_info / graph input / graph output entry this value was declared with. */
  info?: ValueInfoProto;

  constructor(
    public readonly graph: Graph,
    public name: string,
  ) {}

  get isInitializer(): boolean {
    return this.tensor !== undefined;
  }
  get isGraphInput(): boolean {
    return this.graph.inputs.includes(this);
  }
  get isGraphOutput(): boolean {
    return this.graph.outputs.includes(this);
  }
  /** The uses now, as a snapshot: rewiring while iterating over it is safe. */
  uses(): Use[] {
    return [...this.useList];
  }
  get useCount(): number {
    return this.useList.length;
  }
  /** Consumers in node order. */
  consumers(): Node[] {
    return [...new Set(this.useList.map((u) => u.node))];
  }
  /** @internal Node.setInput's bookkeeping. */
  addUse(u: Use): void {
    this.useList.push(u);
  }
  /** @internal */
  removeUse(node: Node, index: number): void {
    const k = this.useList.findIndex((u) => u.node === node && u.index === index);
    if (k >= 0) this.useList.splice(k, 1);
  }
  /** Declares the value's tensor type (value_info / graph input / graph output entry): numbers fixed, strings symbolic, null unknown. */
  setTensorType(elemType: number, shape?: (number | string | null)[]): void {
    const dim = shape?.map((d) => (typeof d === 'number' ? { dim_value: d } : typeof d === 'string' ? { dim_param: d } : {}));
    this.info = { name: this.name, type: { tensor_type: shape ? { elem_type: elemType, shape: { dim: dim! } } : { elem_type: elemType } } };
  }
  get type(): TypeProto | undefined {
    return this.info?.type;
  }
  /** Static shape when known: numbers for fixed dims, strings for symbolic ones, null for unknown. */
  shape(): (number | string | null)[] | undefined {
    if (this.tensor) return [...this.tensor.dims];
    const dims = this.info?.type?.tensor_type?.shape?.dim;
    if (!this.info?.type?.tensor_type?.shape) return undefined;
    return (dims ?? []).map((d) => (d.dim_value !== undefined && d.dim_value !== null && Object.prototype.hasOwnProperty.call(d, 'dim_value') ? Number(d.dim_value) : d.dim_param ? d.dim_param : null));
  }
  elemType(): number | undefined {
    if (this.tensor) return this.tensor.dataType;
    return this.info?.type?.tensor_type?.elem_type;
  }
  /** The tensor behind this value if it is an initializer or the output of a Constant node. */
  constantTensor(): Tensor | undefined {
    if (this.tensor) return this.tensor;
    const p = this.producer;
    if (p && p.opType === 'Constant' && p.domain === '') {
      const a = p.attr('value');
      if (a?.t) return tensorFromInlineProto(a.t);
      if (a && a.f !== undefined && Object.prototype.hasOwnProperty.call(a, 'f')) return Tensor.fromFloat32(Float32Array.of(a.f), []);
      if (p.attr('value_float')) return Tensor.fromFloat32(Float32Array.of(p.attr('value_float')!.f ?? 0), []);
      if (p.attr('value_int')) return Tensor.fromInt64([p.attr('value_int')!.i ?? 0], []);
      if (p.attr('value_ints')) return Tensor.fromInt64(p.attr('value_ints')!.ints ?? [], [p.attr('value_ints')!.ints?.length ?? 0]);
    }
    return undefined;
  }
  /** A scalar (or one-element) constant's value, else undefined. */
  scalar(): number | undefined {
    const t = this.constantTensor();
    if (!t || t.size !== 1) return undefined;
    try {
      return t.numbers()[0];
    } catch {
      return undefined;
    }
  }
}

export class Node {
  inputs: (Value | null)[] = [];
  outputs: (Value | null)[] = [];
  attributes: AttributeProto[] = [];
  /** The NodeProto the node was read from (or a fresh one): fields the IR does not model pass through. */
  proto: NodeProto;

  constructor(
    public readonly graph: Graph,
    public opType: string,
    public domain: string,
    public name: string,
    proto?: NodeProto,
  ) {
    this.proto = proto ?? {};
  }

  /** The producer of input k (onnx-graphsurgeon's i()). */
  i(k = 0): Node | null {
    return this.inputs[k]?.producer ?? null;
  }
  /** The u-th consumer of output k (onnx-graphsurgeon's o()). */
  o(k = 0, u = 0): Node | null {
    return this.outputs[k]?.uses()[u]?.node ?? null;
  }
  input(k: number): Value | null {
    return this.inputs[k] ?? null;
  }
  output(k = 0): Value {
    const v = this.outputs[k];
    if (!v) throw new Error(`node ${this.describe()} has no output ${k}`);
    return v;
  }
  attr(name: string): AttributeProto | undefined {
    return this.attributes.find((a) => a.name === name);
  }
  attrInt(name: string, dflt?: number): number | undefined {
    const a = this.attr(name);
    return a ? Number(a.i) : dflt;
  }
  attrFloat(name: string, dflt?: number): number | undefined {
    const a = this.attr(name);
    return a ? a.f : dflt;
  }
  attrInts(name: string): number[] | undefined {
    const a = this.attr(name);
    return a ? (a.ints ?? []).map(Number) : undefined;
  }
  attrString(name: string, dflt?: string): string | undefined {
    const a = this.attr(name);
    return a?.s ? Buffer.from(a.s).toString('utf8') : dflt;
  }
  setAttr(a: AttributeProto): void {
    const k = this.attributes.findIndex((x) => x.name === a.name);
    if (k >= 0) this.attributes[k] = a;
    else this.attributes.push(a);
  }
  setInput(k: number, v: Value | null): void {
    const old = this.inputs[k];
    if (old) old.removeUse(this, k);
    while (this.inputs.length <= k) this.inputs.push(null);
    this.inputs[k] = v;
    if (v) v.addUse({ node: this, index: k });
  }
  describe(): string {
    return `'${this.name || '(unnamed)'}' (${this.domain ? this.domain + '::' : ''}${this.opType})`;
  }
  /** Names of values of the enclosing graph that this node's subgraphs read (at any depth); empty for most nodes. */
  subgraphReads(): Set<string> {
    const out = new Set<string>();
    for (const a of this.attributes) for (const sub of subgraphsOf(a)) for (const name of outerReads(sub)) out.add(name);
    return out;
  }
}

function subgraphsOf(a: AttributeProto): GraphProto[] {
  if (a.type === AttributeType.GRAPH && a.g) return [a.g];
  if (a.type === AttributeType.GRAPHS) return a.graphs ?? [];
  return [];
}

/** The names a graph proto reads that it does not define itself (its inputs, initializers, node outputs), recursively. */
function outerReads(g: GraphProto): Set<string> {
  const sparse = (g.sparse_initializer as { values?: { name?: string } }[] | undefined) ?? [];
  const defined = new Set<string>([...(g.input ?? []).map((v) => v.name ?? ''), ...(g.initializer ?? []).map((t) => t.name ?? ''), ...sparse.map((t) => t.values?.name ?? '')]);
  for (const n of g.node ?? []) for (const o of n.output ?? []) defined.add(o);
  const reads = new Set<string>();
  for (const n of g.node ?? []) {
    for (const i of n.input ?? []) if (i) reads.add(i);
    for (const a of n.attribute ?? []) for (const sub of subgraphsOf(a)) for (const name of outerReads(sub)) reads.add(name);
  }
  for (const d of defined) reads.delete(d);
  return reads;
}

export interface NodeSpec {
  op: string;
  inputs: (Value | null)[];
  /** Output values, or names (hints) for new ones, or a count. */
  outputs?: (Value | string)[] | number;
  attrs?: AttributeProto[];
  name?: string;
  domain?: string;
  /** Insert before this node in the node list (default: append). */
  before?: Node;
}

export class Graph {
  nodes: Node[] = [];
  inputs: Value[] = [];
  outputs: Value[] = [];
  /** Initializers in file order. */
  initializers: Value[] = [];
  /** value_info entries in file order (values whose info came from value_info). */
  valueInfo: Value[] = [];
  readonly values = new Map<string, Value>();
  private nameCounter = new Map<string, number>();

  constructor(public name: string) {}

  value(name: string): Value {
    const v = this.values.get(name);
    if (!v) throw new Error(`no value named '${name}'`);
    return v;
  }
  has(name: string): boolean {
    return this.values.has(name);
  }
  getOrCreate(name: string): Value {
    let v = this.values.get(name);
    if (!v) {
      v = new Value(this, name);
      this.values.set(name, v);
    }
    return v;
  }
  /** A name not used by any value or node yet, derived from the hint. */
  uniqueName(hint: string): string {
    if (!this.values.has(hint)) return hint;
    let k = this.nameCounter.get(hint) ?? 1;
    while (this.values.has(`${hint}_${k}`)) k++;
    this.nameCounter.set(hint, k + 1);
    return `${hint}_${k}`;
  }
  createValue(hint: string): Value {
    return this.getOrCreate(this.uniqueName(hint));
  }
  addInitializer(hint: string, tensor: Tensor): Value {
    const v = this.createValue(hint);
    v.tensor = tensor;
    this.initializers.push(v);
    return v;
  }
  addNode(spec: NodeSpec): Node {
    const name = spec.name ?? '';
    const n = new Node(this, spec.op, spec.domain ?? '', name);
    n.attributes = spec.attrs ?? [];
    spec.inputs.forEach((v, k) => n.setInput(k, v));
    const outs = spec.outputs ?? 1;
    const list: (Value | string)[] = typeof outs === 'number' ? Array.from({ length: outs }, (_, k) => `${name || spec.op}_out${k}`) : outs;
    for (const o of list) {
      const v = typeof o === 'string' ? this.createValue(o) : o;
      if (v.producer) throw new Error(`value '${v.name}' already has a producer`);
      v.producer = n;
      n.outputs.push(v);
    }
    if (spec.before) {
      const at = this.nodes.indexOf(spec.before);
      this.nodes.splice(at < 0 ? this.nodes.length : at, 0, n);
    } else this.nodes.push(n);
    return n;
  }
  /** Removes a node, detaching its inputs; its outputs lose their producer. */
  removeNode(n: Node): void {
    n.inputs.forEach((_, k) => n.setInput(k, null));
    for (const o of n.outputs) if (o && o.producer === n) o.producer = null;
    const at = this.nodes.indexOf(n);
    if (at >= 0) this.nodes.splice(at, 1);
  }
  /**
   * Points every use of `from` at `to`. A graph output `from` is the caller's decision: 'move' makes `to` that graph
   * output instead (the output takes `to`'s name), 'keep' leaves it on `from`, 'refuse' throws.
   */
  replaceAllUses(from: Value, to: Value, graphOutput: 'move' | 'keep' | 'refuse'): void {
    if (graphOutput === 'refuse' && from.isGraphOutput) throw new Error(`value '${from.name}' is a graph output`);
    for (const u of from.uses()) u.node.setInput(u.index, to);
    if (graphOutput === 'move') this.outputs = this.outputs.map((o) => (o === from ? to : o));
  }
  /**
   * The nodes `roots` depend on, through node inputs and what subgraphs read by name (an If branch may read an outer
   * value that no node input names).
   */
  liveNodes(roots: Value[]): Set<Node> {
    const live = new Set<Node>();
    const stack = roots.map((v) => v.producer).filter((n): n is Node => !!n);
    while (stack.length) {
      const n = stack.pop()!;
      if (live.has(n)) continue;
      live.add(n);
      for (const v of n.inputs) if (v?.producer && !live.has(v.producer)) stack.push(v.producer);
      for (const name of n.subgraphReads()) {
        const p = this.values.get(name)?.producer;
        if (p && !live.has(p)) stack.push(p);
      }
    }
    return live;
  }
  /** Names of the values the subgraphs of `nodes` read. */
  subgraphReads(nodes: Iterable<Node> = this.nodes): Set<string> {
    const out = new Set<string>();
    for (const n of nodes) for (const name of n.subgraphReads()) out.add(name);
    return out;
  }
  /**
   * Removes nodes that no graph output depends on, then initializers nothing reads (node inputs, subgraphs, graph
   * inputs and outputs).
   */
  removeDeadNodes(): number {
    const live = this.liveNodes(this.outputs);
    const dead = this.nodes.filter((n) => !live.has(n));
    for (const n of dead) this.removeNode(n);
    const read = this.subgraphReads();
    const kept = (v: Value) => v.useCount > 0 || read.has(v.name) || this.outputs.includes(v) || this.inputs.includes(v);
    this.initializers = this.initializers.filter(kept);
    for (const [name, v] of this.values) if (!v.producer && !v.tensor && !kept(v)) this.values.delete(name);
    for (const [name, v] of this.values) if (v.tensor && !this.initializers.includes(v)) this.values.delete(name);
    this.valueInfo = this.valueInfo.filter((v) => this.values.get(v.name) === v);
    return dead.length;
  }
  /**
   * A copy to rewrite while this graph stays as it is: new nodes and values, the same tensors (views into the file)
   * and protos; `valueOf`/`nodeOf` find the copy of a value or node of this graph.
   */
  clone(): GraphCopy {
    const g = new Graph(this.name);
    const proto = (this as unknown as { proto?: GraphProto }).proto;
    if (proto) (g as unknown as { proto: GraphProto }).proto = proto;
    for (const [k, c] of this.nameCounter) g.nameCounter.set(k, c);
    const values = new Map<Value, Value>();
    for (const v of this.values.values()) {
      const c = g.getOrCreate(v.name);
      c.tensor = v.tensor;
      c.info = v.info;
      const outInfo = (v as Value & { outputInfo?: ValueInfoProto }).outputInfo;
      if (outInfo) (c as Value & { outputInfo?: ValueInfoProto }).outputInfo = outInfo;
      values.set(v, c);
    }
    const valueOf = (v: Value): Value => {
      const c = values.get(v);
      if (!c) throw new Error(`value '${v.name}' is not in graph '${this.name}'`);
      return c;
    };
    const nodes = new Map<Node, Node>();
    for (const n of this.nodes) {
      const c = new Node(g, n.opType, n.domain, n.name, n.proto);
      c.attributes = [...n.attributes];
      n.inputs.forEach((v, k) => c.setInput(k, v ? valueOf(v) : null));
      for (const o of n.outputs) {
        const co = o ? valueOf(o) : null;
        if (co) co.producer = c;
        c.outputs.push(co);
      }
      g.nodes.push(c);
      nodes.set(n, c);
    }
    g.inputs = this.inputs.map(valueOf);
    g.outputs = this.outputs.map(valueOf);
    g.initializers = this.initializers.map(valueOf);
    g.valueInfo = this.valueInfo.map(valueOf);
    return {
      graph: g,
      valueOf,
      nodeOf: (n) => {
        const c = nodes.get(n);
        if (!c) throw new Error(`node ${n.describe()} is not in graph '${this.name}'`);
        return c;
      },
    };
  }
  /** Stable topological sort: keeps the current order wherever it is already valid. */
  toposort(): void {
    const index = new Map(this.nodes.map((n, k) => [n, k]));
    const pending = new Map<Node, number>();
    const consumers = new Map<Node, Node[]>();
    for (const n of this.nodes) {
      const deps = new Set<Node>();
      for (const v of n.inputs) if (v?.producer && index.has(v.producer) && v.producer !== n) deps.add(v.producer);
      for (const name of n.subgraphReads()) {
        const p = this.values.get(name)?.producer;
        if (p && index.has(p) && p !== n) deps.add(p);
      }
      pending.set(n, deps.size);
      for (const d of deps) {
        if (!consumers.has(d)) consumers.set(d, []);
        consumers.get(d)!.push(n);
      }
    }
    // A min-heap on original position keeps the result stable.
    const heap: Node[] = [];
    const push = (n: Node) => {
      heap.push(n);
      let i = heap.length - 1;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (index.get(heap[p])! <= index.get(heap[i])!) break;
        [heap[p], heap[i]] = [heap[i], heap[p]];
        i = p;
      }
    };
    const pop = (): Node => {
      const top = heap[0];
      const last = heap.pop()!;
      if (heap.length) {
        heap[0] = last;
        let i = 0;
        for (;;) {
          const l = 2 * i + 1, r = l + 1;
          let m = i;
          if (l < heap.length && index.get(heap[l])! < index.get(heap[m])!) m = l;
          if (r < heap.length && index.get(heap[r])! < index.get(heap[m])!) m = r;
          if (m === i) break;
          [heap[m], heap[i]] = [heap[i], heap[m]];
          i = m;
        }
      }
      return top;
    };
    for (const n of this.nodes) if (pending.get(n) === 0) push(n);
    const out: Node[] = [];
    while (heap.length) {
      const n = pop();
      out.push(n);
      for (const c of consumers.get(n) ?? []) {
        const left = pending.get(c)! - 1;
        pending.set(c, left);
        if (left === 0) push(c);
      }
    }
    if (out.length !== this.nodes.length) throw new Error('graph has a cycle');
    this.nodes = out;
  }
}

/** A graph's copy and where each of the original's values and nodes went. */
export interface GraphCopy {
  graph: Graph;
  valueOf(v: Value): Value;
  nodeOf(n: Node): Node;
}

/** Attribute builders. */
export const attr = {
  int: (name: string, i: number): AttributeProto => ({ name, type: AttributeType.INT, i }),
  float: (name: string, f: number): AttributeProto => ({ name, type: AttributeType.FLOAT, f }),
  string: (name: string, s: string): AttributeProto => ({ name, type: AttributeType.STRING, s: Buffer.from(s, 'utf8') }),
  ints: (name: string, ints: number[]): AttributeProto => ({ name, type: AttributeType.INTS, ints }),
  floats: (name: string, floats: number[]): AttributeProto => ({ name, type: AttributeType.FLOATS, floats }),
};
