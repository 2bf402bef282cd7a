// What a VAR export holds: its blocks and their FFNs, the graph kind and the token (patch) layout. Computed once per
// model and handed to every pass; passes never re-derive it.
import { MoefyError } from '../errors';
import { Graph, Node, Value } from '../ir/graph';
import { describeFailure, MatchFailure, matchAny } from '../ir/match';
import { Model } from '../ir/model';
import { ActivationKind, DEFAULT_ROUTING, isDynamicMoe, METADATA, MOE_INPUT, RoutingRule, scaleOfStep, THRESHOLD_INPUT, VAR_PATCH_NUMS } from '../op';
import { FloatPrecision, precisionOf, storedWeight } from './exporter-styles';
import { feedsRouterNorms, readRouter, routerNodes as routerOfMoe, RouterWeights } from './router-graph';
import { ACTIVATION_PATTERNS } from './patterns';
import { fullSequenceTokens, inputRole, KvCache, readSignature } from './var-signature';

export { isKvInputName, isKvOutputName, kvInputFor, kvOutputFor } from './var-signature';
export type { KvCache } from './var-signature';

export { VAR_PATCH_NUMS };

/** A linear layer: MatMul(x, W[in,out]) (+ bias Add, either operand order) or Gemm(x, W, b). */
export interface Linear {
  node: Node;
  weight: Value;
  /** The weight is stored [out, in] (Gemm transB=1, or a run-time Transpose of PyTorch's parameter). */
  transposed: boolean;
  /** The run-time Transpose(perm=[1,0]) between the initializer and the MatMul (dynamo exporter, torch 2.5-2.8). */
  weightTranspose?: Node;
  bias?: Value;
  biasNode?: Node;
  input: Value;
  /** The output after the bias. */
  output: Value;
  inFeatures: number;
  outFeatures: number;
}

export interface FfnSite {
  block: number;
  /** The FFN input: after LayerNorm and the AdaLN scale/shift. Router and experts read it. */
  ffnIn: Value;
  fc1: Linear;
  activation: { kind: ActivationKind; pattern: string; nodes: Node[] };
  /** The hidden activation (input of fc2). */
  hidden: Value;
  fc2: Linear;
  /** The FFN's output (fc2 with bias). */
  output: Value;
  /** The AdaLN gate multiply after the FFN (stays outside the MoE). */
  gate?: Node;
  D: number;
  H: number;
  /**
   * The [B, L, D] values a DynamicMoE node replacing this FFN reads and replaces: ffnIn and output, or for a Gemm
   * FFN (run on [B·L, D] rows) the values before and after the Reshapes around it; null when a Gemm FFN has no such
   * Reshapes (it cannot be converted).
   */
  moeIo: { X: Value; Y: Value } | null;
  /** The float type the FFN computes in (its weights'): the emitted MoE keeps it. */
  precision: FloatPrecision;
}

export interface MoeSite {
  block: number;
  node: Node;
  ffnIn: Value;
  D: number;
  H: number;
  experts: number;
  expertSize: number;
  activation: string;
  /** The node's routing rule (its `routing` attribute; relative when absent). */
  routing: RoutingRule;
  /** Whether the node has a skip_bias input. */
  skipBias: boolean;
  /** Parameters of the router subgraph that computes the node's norms. */
  routerParams: number;
  routerWidth: number | null;
  /** The nodes of the router subgraph (ffn_in → norms). */
  routerNodes: Node[];
  /** Thresholds per scale: from the graph input/initializer feeding the node, else the attribute. */
  thresholds: number[];
  /** The router subgraph's weights, or null when it is not MatMul → GELU → MatMul → Abs (→ square). */
  router: RouterWeights | null;
}

/** What a converted model says about its conversion. */
export interface MoeFacts {
  /** The `moe_threshold` graph input feeding the nodes, when the model has it. */
  thresholdInput: Value | null;
  /** Default thresholds per scale: the threshold input's initializer, else the first node's. */
  thresholds: number[];
  /** First MoE scale (1-based): from the conversion metadata, else the first scale with a threshold above 0. */
  fromScale: number | null;
}

export interface Block {
  index: number;
  ffn?: FfnSite;
  moe?: MoeSite;
}

export interface PatchLayout {
  patchNums: number[];
  /** Tokens per scale (pn²). */
  tokens: number[];
  /** First token index of each scale in the full sequence. */
  offsets: number[];
  /** Σ pn². */
  L: number;
  /** 'model': the converted model's DynamicMoE nodes (their patch_nums attribute). */
  source: 'default' | 'override' | 'model';
}

export interface VarStructure {
  blocks: Block[];
  /** 'full': the teacher-forcing forward over L = Σ pn² tokens; 'step': one scale of KV-cached generation. */
  kind: 'full' | 'step';
  /** For step graphs with a fixed token count, the scale (1-based) it computes; null when dynamic. */
  stepScale: number | null;
  /** Transformer rows per input sample: 2 when the graph doubles the batch for classifier-free guidance. */
  rowsPerSample: number;
  layout: PatchLayout;
  D: number;
  H: number;
  /** The logits output (named *logit*, else the first output). */
  logits: Value;
  /** The class labels input. */
  label: Value | null;
  /** The classifier-free-guidance strength input of step graphs that guide inside. */
  cfg: Value | null;
  /** Width of the logits (VQ vocabulary), when found. */
  vocab: number | null;
  /** Classes of the label input: rows of the class-embedding table minus the null class (10 when not found). */
  classes: number;
  /** Step graphs' KV cache (empty lists for full-sequence graphs). */
  kv: KvCache;
  /** The token-feature input ([B, l, Cvae]; x_BLCv_wo_first_l in full graphs), null in the first step's graph. */
  tokenInput: Value | null;
  /** For converted models: thresholds and from-scale; null for dense models. */
  moe: MoeFacts | null;
}

export function makeLayout(patchNums: number[], source: PatchLayout['source']): PatchLayout {
  const tokens = patchNums.map((p) => p * p);
  const offsets: number[] = [];
  let L = 0;
  for (const t of tokens) {
    offsets.push(L);
    L += t;
  }
  return { patchNums, tokens, offsets, L, source };
}

const dimsOf = (v: Value) => v.tensor?.dims ?? [];

/** A MatMul/Gemm node with a constant 2-D weight, seen as a linear layer, with its bias if one follows. */
export function linearAt(n: Node): Linear | null {
  if (n.domain !== '') return null;
  if (n.opType === 'MatMul') {
    const sw = storedWeight(n.inputs[1]);
    if (!sw || !n.inputs[0]) return null;
    const w = sw.weight;
    const [k, m] = sw.transpose ? [w.tensor!.dims[1], w.tensor!.dims[0]] : w.tensor!.dims;
    const out = n.output(0);
    let bias: Value | undefined, biasNode: Node | undefined;
    if (out.useCount === 1 && !out.isGraphOutput) {
      const a = out.uses()[0].node;
      if (a.opType === 'Add' && a.domain === '') {
        const other = a.inputs[1 - out.uses()[0].index];
        if (other?.tensor && other.tensor.size === m && dimsOf(other).length === 1) {
          bias = other;
          biasNode = a;
        }
      }
    }
    return { node: n, weight: w, transposed: !!sw.transpose, weightTranspose: sw.transpose, bias, biasNode, input: n.inputs[0]!, output: biasNode ? biasNode.output(0) : out, inFeatures: k, outFeatures: m };
  }
  if (n.opType === 'Gemm') {
    const sw = storedWeight(n.inputs[1]);
    if (!sw || !n.inputs[0]) return null;
    const w = sw.weight;
    if ((n.attrInt('transA', 0) ?? 0) !== 0) return null;
    if ((n.attrFloat('alpha', 1) ?? 1) !== 1 || (n.attrFloat('beta', 1) ?? 1) !== 1) return null;
    // transB=1 on a run-time Transpose of the weight reads it as stored.
    const transposed = ((n.attrInt('transB', 0) ?? 0) === 1) !== !!sw.transpose;
    const [a, b] = w.tensor!.dims;
    const bias = n.inputs[2] ?? undefined;
    return { node: n, weight: w, transposed, weightTranspose: sw.transpose, bias: bias ?? undefined, input: n.inputs[0]!, output: n.output(0), inFeatures: transposed ? b : a, outFeatures: transposed ? a : b };
  }
  return null;
}

/** fc1 from the value it produces (with bias Add or Gemm). */
function linearProducing(v: Value): Linear | null {
  const p = v.producer;
  if (!p) return null;
  if (p.opType === 'Add' && p.domain === '') {
    for (const k of [0, 1]) {
      const mm = p.inputs[k]?.producer;
      if (mm && mm.opType === 'MatMul') {
        const lin = linearAt(mm);
        if (lin && lin.biasNode === p) return lin;
      }
    }
    return null;
  }
  const lin = linearAt(p);
  return lin && lin.output === v ? lin : null;
}

interface FfnCandidateFailure {
  fc2: Node;
  failure: MatchFailure;
  upstreamFc1: Node | null;
}

/** Walks up from v (at most `depth` nodes) looking for a linear with `out` output features. */
function findUpstreamLinear(v: Value, out: number, inn: number, depth = 16): Node | null {
  const seen = new Set<Node>();
  const queue: [Value, number][] = [[v, 0]];
  while (queue.length) {
    const [x, d] = queue.shift()!;
    const p = x.producer;
    if (!p || seen.has(p) || d > depth) continue;
    seen.add(p);
    const lin = linearAt(p);
    if (lin && lin.outFeatures === out && lin.inFeatures === inn) return p;
    for (const i of p.inputs) if (i && !i.tensor) queue.push([i, d + 1]);
  }
  return null;
}

/** The nodes of converted models' routers. */
function routerNodes(g: Graph): Set<Node> {
  return new Set(g.nodes.filter(isDynamicMoe).flatMap((n) => [...routerOfMoe(n)]));
}

export function findFfnSites(g: Graph): { sites: FfnSite[]; failures: FfnCandidateFailure[] } {
  const sites: FfnSite[] = [];
  const failures: FfnCandidateFailure[] = [];
  const routers = routerNodes(g);
  for (const n of g.nodes) {
    const fc2 = linearAt(n);
    if (!fc2 || fc2.inFeatures <= fc2.outFeatures) continue;
    // A converted model's router (D → width → E) looks like a narrow FFN: it is not one (either of its MatMuls
    // narrows, depending on the width).
    if (routers.has(n) || feedsRouterNorms(fc2.output)) continue;
    const actNode = fc2.input.producer;
    if (!actNode) continue;
    const m = matchAny(actNode, ACTIVATION_PATTERNS.map((a) => ({ name: a.name, pattern: a.pattern })));
    if (!m.ok) {
      const up = findUpstreamLinear(fc2.input, fc2.inFeatures, fc2.outFeatures);
      if (up) failures.push({ fc2: n, failure: m.failure, upstreamFc1: up });
      continue;
    }
    const pre = m.values.pre;
    const fc1 = linearProducing(pre);
    if (!fc1 || fc1.outFeatures !== fc2.inFeatures || fc1.inFeatures !== fc2.outFeatures) {
      const up = findUpstreamLinear(fc2.input, fc2.inFeatures, fc2.outFeatures);
      if (up)
        failures.push({
          fc2: n,
          failure: { node: pre.producer, predicate: fc1 ? `fc1 is ${fc1.inFeatures}→${fc1.outFeatures}, fc2 is ${fc2.inFeatures}→${fc2.outFeatures}` : `the activation's input '${pre.name}' is not a linear layer (MatMul+Add or Gemm)`, depth: 99 },
          upstreamFc1: up,
        });
      continue;
    }
    // Every use of fc1's output must be inside the activation: the MoE replaces the whole chain.
    const chain = new Set(m.matched);
    if (pre.uses().some((u) => !chain.has(u.node)) || pre.isGraphOutput) {
      failures.push({ fc2: n, failure: { node: pre.producer, predicate: `fc1's output '${pre.name}' is used outside the activation`, depth: 99 }, upstreamFc1: fc1.node });
      continue;
    }
    const kind = ACTIVATION_PATTERNS.find((a) => a.name === m.name)!.kind;
    const outUses = fc2.output.uses();
    const gate = outUses.length === 1 && outUses[0].node.opType === 'Mul' ? outUses[0].node : undefined;
    let moeIo: FfnSite['moeIo'] = { X: fc1.input, Y: fc2.output };
    if (fc1.node.opType === 'Gemm') {
      // Gemm-style FFNs run on [B·L, D] rows between two Reshapes: the op wants [B, L, D].
      const rs = fc1.input.producer;
      const back = fc2.output.useCount === 1 ? fc2.output.uses()[0].node : null;
      moeIo = rs && rs.opType === 'Reshape' && back && back.opType === 'Reshape' ? { X: rs.inputs[0]!, Y: back.output(0) } : null;
    }
    sites.push({
      block: -1,
      ffnIn: fc1.input,
      fc1,
      activation: { kind, pattern: m.name, nodes: m.matched },
      hidden: fc2.input,
      fc2,
      output: fc2.output,
      gate,
      D: fc1.inFeatures,
      H: fc1.outFeatures,
      moeIo,
      precision: precisionOf(fc1.weight, `FFN ${fc1.node.describe()}`),
    });
  }
  return { sites, failures };
}

/** Why the nearest thing to an FFN is not one, when no fc2 candidate had an fc1 above it. */
function closestFfnCandidate(g: Graph): string {
  const mms = g.nodes.filter((n) => (n.opType === 'MatMul' || n.opType === 'Gemm') && n.domain === '');
  if (!mms.length) return 'the graph has no MatMul or Gemm';
  const lins = mms.map(linearAt).filter((l): l is Linear => l !== null);
  if (!lins.length) {
    const n = mms[0];
    const w = n.inputs[1];
    return `at node ${n.describe()}: its weight '${w?.name ?? ''}' is not a 2-D initializer (or a Transpose(perm=[1,0]) of one)${w?.producer ? `, it is computed by ${w.producer.describe()}` : ''}`;
  }
  const narrowing = lins.filter((l) => l.inFeatures > l.outFeatures && !feedsRouterNorms(l.output));
  if (!narrowing.length) return `no linear layer maps a wider hidden layer back (H→D); the linears are ${[...new Set(lins.map((l) => `${l.inFeatures}→${l.outFeatures}`))].join(', ')}`;
  const l = narrowing[0];
  const act = l.input.producer;
  return `at node ${l.node.describe()} (${l.inFeatures}→${l.outFeatures}): no linear layer ${l.outFeatures}→${l.inFeatures} within 16 nodes above it${act ? ` (its input comes from ${act.describe()})` : ''}`;
}

function moeSiteOf(n: Node, block: number): MoeSite {
  const x = n.inputs[0]!;
  const w1 = n.inputs[2]?.tensor;
  const E = n.attrInt('num_experts', 1)!;
  const [D, H] = w1 ? w1.dims : [0, 0];
  // The router: the weights reached upstream of `norms` before reaching X.
  let routerParams = 0;
  let routerWidth: number | null = null;
  const seen = routerOfMoe(n);
  for (const p of seen)
    for (const i of p.inputs) {
      if (!i?.tensor) continue;
      if (i.tensor.dims.length >= 2) routerParams += i.tensor.size; // weights, not the GELU's scalar constants
      if (p.opType === 'MatMul' && i.tensor.dims.length === 2 && i.tensor.dims[0] === D) routerWidth = i.tensor.dims[1];
    }
  let thresholds = (n.attr('threshold')?.floats ?? []).map(Number);
  const tIn = n.inputs[MOE_INPUT.threshold];
  const tt = tIn?.tensor ?? tIn?.constantTensor();
  if (tt) thresholds = tt.numbers();
  return { block, node: n, ffnIn: x, D, H, experts: E, expertSize: E ? H / E : 0, activation: n.attrString('activation', 'relu')!, routing: n.attrString('routing', DEFAULT_ROUTING) as RoutingRule, skipBias: !!n.inputs[MOE_INPUT.skip_bias], routerParams, routerWidth, routerNodes: [...seen], thresholds, router: n.inputs[MOE_INPUT.norms] ? readRouter(n.inputs[MOE_INPUT.norms]!) : null };
}

/** The patch layout a converted model's DynamicMoE nodes carry (their patch_nums attribute), or null. */
export function ownPatchNums(nodes: readonly Node[]): number[] | null {
  const pn = nodes.find(isDynamicMoe)?.attr('patch_nums')?.ints?.map(Number);
  return pn?.length ? pn : null;
}

export interface AnalyseOptions {
  patchNums?: number[];
}

export function analyseVar(model: Model, opts: AnalyseOptions = {}): VarStructure {
  const g = model.graph;
  // Dead nodes (the dynamo exporter leaves unused Identity outputs and Constants) compute nothing; dropped first so
  // that a dead Identity on fc1's output does not count as a second use of it.
  g.removeDeadNodes();
  const { sites, failures } = findFfnSites(g);
  const moeNodes = g.nodes.filter(isDynamicMoe);
  if (failures.length) {
    const f = failures[0];
    throw new MoefyError(
      `FFN pattern does not match between ${f.upstreamFc1?.describe() ?? '?'} and ${f.fc2.describe()}: ${describeFailure(f.failure)}`,
    );
  }
  if (sites.length === 0 && moeNodes.length === 0) {
    throw new MoefyError(`not a VAR: no FFN (MatMul/Gemm D→H, GELU or ReLU, MatMul/Gemm H→D) found in graph '${g.name}' (${g.nodes.length} nodes); closest: ${closestFfnCandidate(g)}`);
  }
  // Blocks in graph order.
  const order = new Map(g.nodes.map((n, k) => [n, k]));
  const items: { pos: number; ffn?: FfnSite; moe?: Node }[] = [
    ...sites.map((s) => ({ pos: order.get(s.fc1.node)!, ffn: s })),
    ...moeNodes.map((n) => ({ pos: order.get(n)!, moe: n })),
  ].sort((a, b) => a.pos - b.pos);
  const blocks: Block[] = items.map((it, k) => {
    if (it.ffn) it.ffn.block = k;
    return { index: k, ffn: it.ffn, moe: it.moe ? moeSiteOf(it.moe, k) : undefined };
  });
  const first = blocks[0].ffn ?? blocks[0].moe!;
  const D = first.D, H = first.H;

  const { kv, logits, label, cfg, tokens: tokenInput } = readSignature(g);
  const stepGraph = kv.inputs.length > 0 || kv.outputs.length > 0;
  // A converted model carries its layout in the DynamicMoE nodes (the op routes by it); --patch-nums still overrides.
  const own = ownPatchNums(moeNodes);
  const layoutNums = opts.patchNums ?? own ?? [...VAR_PATCH_NUMS];
  const layout = makeLayout(layoutNums, opts.patchNums ? 'override' : own ? 'model' : 'default');
  if (layout.patchNums.some((p) => !Number.isInteger(p) || p <= 0)) throw new MoefyError(`--patch-nums must be positive integers, got ${layoutNums.join(',')}`);
  const vocab = logitsWidth(logits);
  const classes = numClasses(g, D, layout.L);
  const moe = moeFacts(model, blocks);
  if (!stepGraph) {
    const L = fullSequenceLength(g, D);
    if (L === null) throw new MoefyError(`not a VAR: found ${blocks.length} FFN blocks but neither a KV cache (past_key_*/present_key_*) nor a full-sequence token length (Σ pn² = ${layout.L}) in the graph`);
    if (L !== layout.L)
      throw new MoefyError(`the model's sequence has ${L} tokens but the patch layout ${layout.patchNums.join(',')} has ${layout.L}; pass --patch-nums to match`);
    return { blocks, kind: 'full', stepScale: null, rowsPerSample: 1, layout, D, H, logits, label, cfg, vocab, classes, kv, tokenInput, moe };
  }
  const l = stepTokens(tokenInput);
  let stepScale: number | null = null;
  if (l !== null) {
    const s = scaleOfStep(l, layout.patchNums);
    if (s < 0) throw new MoefyError(`the step graph computes ${l} tokens, which is not exactly one scale of the patch layout ${layout.patchNums.join(',')}; pass --patch-nums`);
    stepScale = s + 1;
  }
  return { blocks, kind: 'step', stepScale, rowsPerSample: doublesBatch(g) ? 2 : 1, layout, D, H, logits, label, cfg, vocab, classes, kv, tokenInput, moe };
}

/** L of a full-sequence graph: from a static token axis of an input, the mask [1,1,L,L] or the position table [1,L,C]. */
function fullSequenceLength(g: Graph, D: number): number | null {
  for (const v of g.initializers) {
    const d = v.tensor!.dims;
    if (d.length === 4 && d[0] === 1 && d[1] === 1 && d[2] === d[3] && d[2] > 1) return d[2];
  }
  for (const v of g.initializers) {
    const d = v.tensor!.dims;
    if (d.length === 3 && d[0] === 1 && d[2] === D && d[1] > 1) return d[1];
  }
  for (const v of g.inputs) {
    const L = fullSequenceTokens(v);
    if (L !== null) return L;
  }
  return null;
}

/** Tokens of a step graph when static: from the token input's axis 1, or 1 for the first step (no token input). */
function stepTokens(x: Value | null): number | null {
  if (!x) return 1;
  const s = x.shape()!;
  return typeof s[1] === 'number' ? s[1] : null;
}

/** Classifier-free guidance inside the graph: the label batch is concatenated with the null class, or tiled ×2. */
function doublesBatch(g: Graph): boolean {
  for (const n of g.nodes) {
    if (n.opType === 'Concat' && n.inputs.some((v) => v?.isGraphInput && inputRole(v.name) === 'label')) return true;
    if (n.opType === 'Tile') {
      const r = n.inputs[1]?.constantTensor();
      if (r && r.numbers()[0] === 2) return true;
    }
  }
  return false;
}

function logitsWidth(v: Value): number | null {
  const s = v.shape();
  const last = s?.[s.length - 1];
  return typeof last === 'number' ? last : null;
}

/** Classes from the class-embedding table [classes + 1, D] feeding a Gather (the last row is the null class). */
function numClasses(g: Graph, D: number, L: number): number {
  for (const n of g.nodes) {
    if (n.opType === 'Gather' && n.inputs[0]?.tensor && n.inputs[0].tensor.dims.length === 2) {
      const rows = n.inputs[0].tensor.dims[0];
      if (n.inputs[0].tensor.dims[1] === D && rows > 10 && rows !== L) return rows - 1;
    }
  }
  return 10;
}

function moeFacts(model: Model, blocks: Block[]): MoeFacts | null {
  const first = blocks.find((b) => b.moe)?.moe;
  if (!first) return null;
  const g = model.graph;
  const thresholdInput = g.has(THRESHOLD_INPUT) && g.inputs.includes(g.value(THRESHOLD_INPUT)) ? g.value(THRESHOLD_INPUT) : null;
  const thresholds = thresholdInput?.tensor ? Array.from(thresholdInput.tensor.numbers()) : first.thresholds;
  const md = model.metadata()[METADATA.fromScale];
  let fromScale: number | null = null;
  if (md && Number.isFinite(Number(md))) fromScale = Number(md);
  else {
    const k = thresholds.findIndex((t) => t > 0);
    fromScale = k >= 0 ? k + 1 : null;
  }
  return { thresholdInput, thresholds, fromScale };
}
