// A model: the graph IR plus the model-level proto fields (opsets, producer, functions, metadata) carried as read.
import { Graph, GraphCopy } from './graph';
import { FunctionProto, ModelProto, OperatorSetIdProto, StringStringEntryProto } from '../onnx/schema';

export class Model {
  constructor(
    public proto: ModelProto,
    public graph: Graph,
  ) {}

  /** A copy to rewrite (see Graph.clone); the model-level fields are copied, so changing them leaves this model alone. */
  clone(): ModelCopy {
    const c = this.graph.clone();
    const proto: ModelProto = { ...this.proto, opset_import: this.opsetImports.map((o) => ({ ...o })) };
    return { ...c, model: new Model(proto, c.graph) };
  }

  get irVersion(): number {
    return Number(this.proto.ir_version ?? 0);
  }
  get opsetImports(): OperatorSetIdProto[] {
    return this.proto.opset_import ?? [];
  }
  opset(domain = ''): number | undefined {
    const e = this.opsetImports.find((o) => (o.domain ?? '') === domain || (domain === '' && o.domain === 'ai.onnx'));
    return e ? Number(e.version) : undefined;
  }
  setOpset(domain: string, version: number): void {
    const list = (this.proto.opset_import = [...this.opsetImports]);
    const e = list.find((o) => (o.domain ?? '') === domain);
    if (e) e.version = version;
    else list.push(domain ? { domain, version } : { version });
  }
  get functions(): FunctionProto[] {
    return this.proto.functions ?? [];
  }
  addFunction(f: FunctionProto): void {
    this.proto.functions = [...this.functions.filter((x) => !(x.name === f.name && (x.domain ?? '') === (f.domain ?? ''))), f];
  }
  metadata(): Record<string, string> {
    return Object.fromEntries((this.proto.metadata_props ?? []).map((e) => [e.key ?? '', e.value ?? '']));
  }
  setMetadata(key: string, value: string): void {
    const list: StringStringEntryProto[] = [...(this.proto.metadata_props ?? [])].filter((e) => e.key !== key);
    list.push({ key, value });
    this.proto.metadata_props = list;
  }
}

export interface ModelCopy extends GraphCopy {
  model: Model;
}
