// FLOP accounting of a dense (or converted) VAR per scale and per kind, from the graph's MatMul/Gemm shapes and each
// scale's token count. One multiply-add is 2 FLOPs.
//
//   linear on tokens (x[.., K] · W[K, N]):  2·K·N per token row                     (FFN, projections, head)
//   attention (Q·Kᵀ and A·V, all heads):    2·kv·C per query token each, where kv = tokens of the scales up to and
//                                           including the token's own (what the block-causal mask keeps and what
//                                           KV-cached generation computes), C = heads·head_dim = the block width D
//   per-sample linear (AdaLN on the class): 2·K·N per sample row, once per graph run (once per scale for step graphs)
//   router of a DynamicMoE block:          2·D·width + 2·width·E per token row, counted as 'other'
//   FFN of one block:                       fc1 + fc2 = 2·D·H + 2·H·D = 4·D·H per token row
//
// Rows: the tokens of a scale times the batch times rowsPerSample (2 when the graph doubles the batch for CFG).
import { Node, Value } from '../ir/graph';
import { Model } from '../ir/model';
import { linearAt, VarStructure } from './var-structure';

export type FlopKind = 'ffn' | 'attention' | 'projections' | 'head' | 'other';
export const FLOP_KINDS: FlopKind[] = ['ffn', 'attention', 'projections', 'head', 'other'];

export interface ScaleFlops {
  scale: number;
  patch: number;
  tokens: number;
  /** FLOPs of each kind for this scale, for the requested batch. */
  flops: Record<FlopKind, number>;
  total: number;
  ffnShare: number;
}

export interface FlopReport {
  batch: number;
  rowsPerSample: number;
  scales: ScaleFlops[];
  totals: Record<FlopKind, number>;
  total: number;
  /** Per-token FLOPs of the token-wise linears by kind, and the per-sample ones (for readers who want the parts). */
  perToken: Record<FlopKind, number>;
  perSample: number;
  attentionMatMuls: number;
}

const zero = (): Record<FlopKind, number> => ({ ffn: 0, attention: 0, projections: 0, head: 0, other: 0 });

/** Classifies every MatMul/Gemm of the graph. */
export function classifyMatMuls(model: Model, s: VarStructure): { perToken: Record<FlopKind, number>; perSample: number; attention: { node: Node; width: number }[] } {
  const g = model.graph;
  const ffnNodes = new Set<Node>();
  for (const b of s.blocks) if (b.ffn) ffnNodes.add(b.ffn.fc1.node).add(b.ffn.fc2.node);
  const routerNodes = new Set<Node>(s.blocks.flatMap((b) => b.moe?.routerNodes ?? []));
  const perToken = zero();
  let perSample = 0;
  const attention: { node: Node; width: number }[] = [];
  const headNode = findHead(model, s);
  for (const n of g.nodes) {
    if (n.domain !== '' || (n.opType !== 'MatMul' && n.opType !== 'Gemm')) continue;
    const lin = linearAt(n);
    if (!lin) {
      // Activation × activation: the two attention products. Their width is the block's D.
      attention.push({ node: n, width: s.D });
      continue;
    }
    const f = 2 * lin.inFeatures * lin.outFeatures;
    if (ffnNodes.has(n)) perToken.ffn += f;
    else if (routerNodes.has(n)) perToken.other += f;
    else if (n === headNode) perToken.head += f;
    else if (isPerSample(n)) perSample += f;
    else perToken.projections += f;
  }
  // DynamicMoE blocks: their dense FFN cost, plus the router (token-wise) counted as 'other'.
  for (const b of s.blocks) {
    if (!b.moe) continue;
    perToken.ffn += 4 * b.moe.D * b.moe.H;
  }
  return { perToken, perSample, attention };
}

/** The AdaLN linears run on the (SiLU of the) class embedding: one row per sample, not per token. */
function isPerSample(n: Node): boolean {
  const x = n.inputs[0]?.producer;
  if (!x) return false;
  if (x.opType === 'Mul' && x.inputs.some((v) => v?.producer?.opType === 'Sigmoid')) return true;
  return x.opType === 'Sigmoid';
}

/**
 * The head: the linear nearest a graph output (logits first) through elementwise/reshaping ops only. Breadth-first,
 * because in-graph CFG mixing ((1+t)·cond − t·uncond, with t computed from a `cfg` input) has several paths.
 */
function findHead(model: Model, s: VarStructure): Node | null {
  const g = model.graph;
  const pass = new Set(['Add', 'Cast', 'Mul', 'Sub', 'Reshape', 'Identity', 'Slice', 'Split', 'Concat', 'Squeeze', 'Unsqueeze']);
  const outs = [s.logits, ...g.outputs.filter((v) => v !== s.logits)];
  for (const out of outs) {
    const seen = new Set<Node>();
    let frontier: Value[] = [out];
    for (let d = 0; d < 12 && frontier.length; d++) {
      const next: Value[] = [];
      for (const v of frontier) {
        const p = v.producer;
        if (!p || seen.has(p)) continue;
        seen.add(p);
        if ((p.opType === 'MatMul' || p.opType === 'Gemm') && linearAt(p)) return p;
        if (!pass.has(p.opType)) continue;
        for (const i of p.inputs) if (i && !i.tensor && !i.constantTensor()) next.push(i);
      }
      frontier = next;
    }
  }
  return null;
}

export function countFlops(model: Model, s: VarStructure, batch = 1): FlopReport {
  const { perToken, perSample, attention } = classifyMatMuls(model, s);
  const rows = batch * s.rowsPerSample;
  const L = s.layout;
  const scaleIdx = s.kind === 'step' && s.stepScale !== null ? [s.stepScale - 1] : L.tokens.map((_, k) => k);
  const scales: ScaleFlops[] = [];
  const totals = zero();
  // Attention: each attention MatMul costs 2·kv·C per query token.
  const attnPerTokenPerKv = attention.reduce((a, x) => a + 2 * x.width, 0);
  for (const k of scaleIdx) {
    const tokens = L.tokens[k];
    const kv = L.offsets[k] + tokens;
    const f = zero();
    for (const kind of ['ffn', 'projections', 'head'] as FlopKind[]) f[kind] = perToken[kind] * tokens * rows;
    f.attention = attnPerTokenPerKv * kv * tokens * rows;
    // Per-sample AdaLN: computed once per run; a step graph runs once per scale.
    f.other = ((s.kind === 'step' || k === 0 ? perSample : 0) + perToken.other * tokens) * rows;
    const total = FLOP_KINDS.reduce((a, kind) => a + f[kind], 0);
    for (const kind of FLOP_KINDS) totals[kind] += f[kind];
    scales.push({ scale: k + 1, patch: L.patchNums[k], tokens, flops: f, total, ffnShare: total ? f.ffn / total : 0 });
  }
  return { batch, rowsPerSample: s.rowsPerSample, scales, totals, total: FLOP_KINDS.reduce((a, k) => a + totals[k], 0), perToken, perSample, attentionMatMuls: attention.length };
}

/** Router FLOPs per token of one MoE layer: MatMul D → width and width → E (2 FLOPs per multiply-add). */
export function routerFlopsPerToken(D: number, width: number, experts: number): number {
  return 2 * (D * width + width * experts);
}

/**
 * FFN FLOPs of one scale of a MoE model: the dense FFN FLOPs times the fraction of experts that run, plus the routers
 * (`routerPerToken` summed over the layers, times the scale's token rows). The conversion report (expected, from the
 * calibration routing) and `moefy eval` (measured from the `active` outputs) both use it.
 */
export function moeFfnFlops(ffnFlopsDense: number, activeFraction: number, routerPerToken: number, tokens: number, rows: number): { ffn: number; router: number } {
  const router = routerPerToken * tokens * rows;
  return { ffn: ffnFlopsDense * activeFraction + router, router };
}
