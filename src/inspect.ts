// The data behind `moefy inspect`: what a model holds, as one JSON-able object (documented in the README).
import * as fs from 'node:fs';
import { modulePath } from './analysis/exporter-styles';
import { analyseVar, VarStructure } from './analysis/var-structure';
import { countFlops, FlopKind, moeFfnFlops, routerFlopsPerToken, ScaleFlops } from './analysis/flops';
import { Model } from './ir/model';
import { dataTypeName } from './onnx/schema';
import { METADATA, METADATA_PREFIX, MOE_DOMAIN, MOE_OP } from './op';

export interface BlockReport {
  index: number;
  D: number;
  H: number;
  activation: string;
  pattern: string;
  ffnParams: number;
  ffnIn: string;
  /** The FFN's float type (its weights'). */
  precision: string;
  /** How fc1's weight is stored: [in, out] for MatMul, [out, in] for Gemm transB or behind a run-time Transpose. */
  weightLayout: 'in_out' | 'out_in' | 'out_in_transpose';
  /** fc1's module path (name-scope metadata or node name), when the export names it. */
  module: string | null;
  moe: null | { experts: number; expertSize: number; routerParams: number; routerWidth: number | null; node: string };
}

export interface InspectReport {
  file: string;
  irVersion: number;
  opsets: Record<string, number>;
  producer: string;
  parameters: number;
  sizeBytes: number;
  externalData: boolean;
  inputs: { name: string; type: string; shape: (number | string | null)[] }[];
  outputs: { name: string; type: string; shape: (number | string | null)[] }[];
  graph: { kind: 'full' | 'step'; stepScale: number | null; rowsPerSample: number; patchNums: number[]; L: number; layoutSource: string; nodes: number };
  D: number;
  H: number;
  vocab: number | null;
  blocks: BlockReport[];
  scales: ScaleFlops[];
  flops: { batch: number; total: number; totals: Record<FlopKind, number> };
  moe: null | {
    experts: number; expertSize: number; routerParams: number; routerWidth: number | null; thresholds: number[]; fromScale: number | null;
    /** The nodes' routing rule and whether they add a skip_bias (one function body serves every node: all share them). */
    routing: string; skipBias: boolean;
    metadata: Record<string, string>;
    /** Per scale, from the conversion's expected active fraction (calibration data): FFN FLOPs dense and MoE (routers included), batch 1. */
    expected: { scale: number; activeFraction: number | null; ffnFlopsDense: number; ffnFlopsMoe: number; routerFlops: number }[] | null;
  };
}

export function inspectModel(model: Model, file: string, opts: { patchNums?: number[]; structure?: VarStructure } = {}): InspectReport {
  const s = opts.structure ?? analyseVar(model, { patchNums: opts.patchNums });
  const g = model.graph;
  const flops = countFlops(model, s, 1);
  let parameters = 0;
  let external = false;
  const extFiles = new Set<string>();
  for (const v of g.initializers) {
    const d = v.tensor!.dims;
    // Learned float weights only: not the block-causal mask buffer [1,1,L,L], not integer index tables.
    const isMask = d.length === 4 && d[0] === 1 && d[1] === 1 && d[2] === d[3];
    if ([1, 10, 11, 16].includes(v.tensor!.dataType) && !isMask) parameters += v.tensor!.size;
    if (v.tensor!.source.kind === 'external') {
      external = true;
      extFiles.add(v.tensor!.source.path);
    }
  }
  let sizeBytes = 0;
  try {
    sizeBytes = fs.statSync(file).size;
    for (const f of extFiles) sizeBytes += fs.statSync(f).size;
  } catch {
    /* in-memory model */
  }
  const io = (v: (typeof g.inputs)[number]) => ({ name: v.name, type: dataTypeName(v.elemType() ?? 0), shape: v.shape() ?? [] });
  const blocks: BlockReport[] = s.blocks.map((b) => {
    if (b.ffn) {
      const f = b.ffn;
      const ffnParams = f.fc1.weight.tensor!.size + (f.fc1.bias?.tensor?.size ?? 0) + f.fc2.weight.tensor!.size + (f.fc2.bias?.tensor?.size ?? 0);
      const weightLayout = f.fc1.weightTranspose ? 'out_in_transpose' : f.fc1.transposed ? 'out_in' : 'in_out';
      return { index: b.index, D: f.D, H: f.H, activation: f.activation.kind, pattern: f.activation.pattern, ffnParams, ffnIn: f.ffnIn.name, precision: f.precision, weightLayout, module: modulePath(f.fc1.node), moe: null };
    }
    const m = b.moe!;
    const ffnParams = [2, 3, 4, 5].reduce((a, k) => a + (m.node.inputs[k]?.tensor?.size ?? 0), 0);
    return {
      index: b.index, D: m.D, H: m.H, activation: m.activation, pattern: `${MOE_DOMAIN}::${MOE_OP}`, ffnParams, ffnIn: m.ffnIn.name,
      precision: m.node.inputs[2]?.tensor?.dataType === 10 ? 'float16' : 'float32', weightLayout: 'in_out', module: null,
      moe: { experts: m.experts, expertSize: m.expertSize, routerParams: m.routerParams, routerWidth: m.routerWidth, node: m.node.name },
    };
  });
  const moeBlocks = s.blocks.filter((b) => b.moe).map((b) => b.moe!);
  let moe: InspectReport['moe'] = null;
  if (moeBlocks.length) {
    const m0 = moeBlocks[0];
    const md = model.metadata();
    const thresholds = m0.thresholds;
    moe = {
      experts: m0.experts, expertSize: m0.expertSize,
      routerParams: moeBlocks.reduce((a, m) => a + m.routerParams, 0), routerWidth: m0.routerWidth,
      thresholds, fromScale: s.moe?.fromScale ?? null, routing: m0.routing, skipBias: m0.skipBias,
      metadata: Object.fromEntries(Object.entries(md).filter(([k]) => k.startsWith(METADATA_PREFIX))),
      expected: null,
    };
    const af = md[METADATA.expectedActiveFraction]?.split(',').map((x) => (x === '-' ? null : Number(x)));
    if (af) {
      const routerPerToken = moeBlocks.reduce((a, m) => a + routerFlopsPerToken(m.D, m.routerWidth ?? 0, m.experts), 0);
      moe.expected = flops.scales.map((sc) => {
        const f = af[sc.scale - 1] ?? null;
        const e = moeFfnFlops(sc.flops.ffn, f ?? 1, routerPerToken, sc.tokens, s.rowsPerSample);
        return { scale: sc.scale, activeFraction: f, ffnFlopsDense: sc.flops.ffn, ffnFlopsMoe: e.ffn, routerFlops: e.router };
      });
    }
  }
  return {
    file, irVersion: model.irVersion,
    opsets: Object.fromEntries(model.opsetImports.map((o) => [o.domain ?? '', Number(o.version)])),
    producer: `${model.proto.producer_name ?? ''} ${model.proto.producer_version ?? ''}`.trim(),
    parameters, sizeBytes, externalData: external,
    inputs: g.inputs.filter((v) => !v.tensor).map(io), outputs: g.outputs.map(io),
    graph: { kind: s.kind, stepScale: s.stepScale, rowsPerSample: s.rowsPerSample, patchNums: s.layout.patchNums, L: s.layout.L, layoutSource: s.layout.source, nodes: g.nodes.length },
    D: s.D, H: s.H, vocab: s.vocab, blocks, scales: flops.scales,
    flops: { batch: 1, total: flops.total, totals: flops.totals }, moe,
  };
}
