// Teacher-forced comparison of a dense VAR and its MoE conversion on full-sequence graphs, per scale: KL divergence
// of the next-token distributions (dense ‖ MoE), top-1 agreement, cross-entropy of both against the ground-truth
// tokens (when the inputs hold `gt_idx_BL`), relative error of every FFN output, active experts per token, and FFN
// and total FLOPs (MoE FFN FLOPs = dense × measured active fraction + routers, the conversion report's formula).
// Several threshold settings of the MoE model can be measured in one pass over the data (the sweep): the dense
// model runs once per batch, the MoE model once per batch and setting.
import * as ort from 'onnxruntime-node';
import { moeFfnFlops } from '../analysis/flops';
import { TEACHER_FORCING } from '../analysis/var-signature';
import { floatView, toHalfTensor } from '../calib/inputs';
import { MoefyError } from '../errors';
import { readTensorSet, sliceSamples, TensorSet } from '../io';
import { DataType } from '../onnx/schema';
import { RoutingRule, scaleOfPositions, THRESHOLD_INPUT } from '../op';
import { replayActive, RouterWeights } from './router-replay';
import { EvalSide, thresholdTensor } from './side';

export const GT_INPUT = TEACHER_FORCING.groundTruth;

export interface ScaleEval {
  scale: number;
  patch: number;
  tokens: number;
  /** Threshold of the MoE model on this scale (null when the MoE side has no threshold input). */
  threshold: number | null;
  /** Counted as a MoE scale in the FLOPs (scale ≥ the conversion's from-scale, or threshold > 0). */
  moe: boolean;
  kl: number;
  top1: number;
  ceDense: number | null;
  ceMoe: number | null;
  ceIncrease: number | null;
  /** ‖Y_moe − Y_dense‖ / ‖Y_dense‖ per layer over the scale's tokens. */
  ffnRelErr: number[];
  /** Mean experts run per token (mean over layers); dense = every expert. */
  activeExperts: number | null;
  activeExpertsDense: number | null;
  activeFraction: number;
  /** Per layer active fraction. */
  activeFractionPerLayer: (number | null)[];
  /**
   * The routers replayed on the dense model's FFN inputs (what the conversion report's expected fraction measures:
   * inside the MoE model later layers see the MoE-perturbed stream); null when not replayed.
   */
  activeFractionDenseStream: number | null;
  ffnFlopsMoeDenseStream: number | null;
  ffnFlopsDense: number;
  ffnFlopsMoe: number;
  routerFlops: number;
  flopsDense: number;
  flopsMoe: number;
}

export interface EvalSummary {
  tokens: number;
  kl: number;
  top1: number;
  ceDense: number | null;
  ceMoe: number | null;
  ceIncrease: number | null;
  activeFraction: number;
  ffnFlopsDense: number;
  ffnFlopsMoe: number;
  flopsDense: number;
  flopsMoe: number;
}

export interface EvalReport {
  dense: string;
  moe: string;
  inputs: string;
  samples: number;
  groundTruth: boolean;
  thresholds: number[] | null;
  fromScale: number | null;
  scales: ScaleEval[];
  /** All scales, token-weighted (FLOPs summed). */
  totals: EvalSummary;
  /** The MoE scales only (token-weighted; the active fraction is FFN-FLOP-weighted, as the conversion's budget). */
  moeScales: EvalSummary & { scales: number[] };
}

export interface EvalOptions {
  /** Threshold settings to measure (one report each); null = the model's defaults. */
  settings?: (number[] | null)[];
  batch?: number;
  /** Only the first N samples. */
  limit?: number;
  /** Called after each batch with (samples done, total). */
  onProgress?: (done: number, total: number) => void;
  /** Per-token `active` maps of one sample (for router maps): sample index in the inputs. */
  keepActiveOf?: number;
  /** Which scales count as MoE in the FLOPs: from the conversion's from-scale on or with threshold > 0 (default), or only those with threshold > 0 (sweeps). */
  moeScalesBy?: 'fromScale' | 'threshold';
  /** Replay the MoE model's routers on the dense model's FFN inputs (the dense side must expose them: openSide withFfnIn). */
  replayRouters?: boolean;
  /** Names to report for the files. */
  names?: { dense?: string; moe?: string; inputs?: string };
}

interface Acc {
  n: Float64Array;
  kl: Float64Array;
  agree: Float64Array;
  ceM: Float64Array;
  diff2: Float64Array[]; // [layer][scale]
  ref2: Float64Array[];
  active: Float64Array[]; // [layer][scale] sum of active counts
  activeMap: Int32Array[] | null; // [layer] per position of the kept sample
  replay: Float64Array[] | null; // [layer][scale] sum of replayed active counts
}

export interface EvalResult {
  reports: EvalReport[];
  /** Per setting, per layer: active count per position of the kept sample (or null). */
  activeMaps: (Int32Array[] | null)[];
}

export async function loadInputs(p: string): Promise<TensorSet> {
  return readTensorSet(p);
}


/** float32 data for a float16 model's input is rounded to float16, as the conversion's calibration does. */
function asInputType(side: EvalSide, name: string, t: ort.Tensor): ort.Tensor {
  const v = side.model.graph.inputs.find((x) => x.name === name);
  return v?.elemType() === DataType.FLOAT16 && t.type === 'float32' ? toHalfTensor(t.data as Float32Array, t.dims) : t;
}

export async function evaluate(dense: EvalSide, moe: EvalSide, inputs: TensorSet, opts: EvalOptions = {}): Promise<EvalResult> {
  const ds = dense.structure, ms = moe.structure;
  const layout = ds.layout;
  if (ms.layout.L !== layout.L || ms.layout.patchNums.join() !== layout.patchNums.join()) throw new MoefyError(`the models have different patch layouts (${layout.patchNums.join(',')} against ${ms.layout.patchNums.join(',')})`);
  if (dense.ffnOut.length !== moe.ffnOut.length) throw new MoefyError(`the models have different depths (${dense.ffnOut.length} and ${moe.ffnOut.length} FFNs)`);
  const S = layout.patchNums.length;
  const L = layout.L;
  const nL = dense.ffnOut.length;
  const settings = opts.settings && opts.settings.length ? opts.settings : [null];
  for (const s of settings) {
    if (s && !moe.hasThresholdInput) throw new MoefyError(`${moe.file} has no '${THRESHOLD_INPUT}' input: thresholds cannot be set (is it a converted model?)`);
    if (s && s.length !== S) throw new MoefyError(`thresholds have ${s.length} values; the model has ${S} scales`);
  }
  if (dense.hasThresholdInput) throw new MoefyError(`${dense.file} is a converted model: give the dense model first`);
  for (const name of new Set([...dense.feeds, ...moe.feeds])) {
    if (!inputs[name]) throw new MoefyError(`the inputs hold no '${name}' (they hold ${Object.keys(inputs).join(', ')})`);
  }
  const gt = inputs[GT_INPUT];
  const samplesAll = inputs[dense.feeds[0]].dims[0] ?? 1;
  const samples = Math.min(samplesAll, opts.limit ?? samplesAll);
  if (gt && (gt.dims.length !== 2 || gt.dims[0] < samples || gt.dims[1] !== L)) throw new MoefyError(`'${GT_INPUT}' has shape [${gt.dims.join(', ')}]; expected [${samples}, ${L}]`);
  const gtData = gt ? (gt.data as BigInt64Array) : null;
  const scaleOf = Int32Array.from(scaleOfPositions(L, layout.patchNums)!);
  const accs: Acc[] = settings.map(() => ({
    n: new Float64Array(S), kl: new Float64Array(S), agree: new Float64Array(S), ceM: new Float64Array(S),
    diff2: Array.from({ length: nL }, () => new Float64Array(S)), ref2: Array.from({ length: nL }, () => new Float64Array(S)),
    active: Array.from({ length: nL }, () => new Float64Array(S)), activeMap: null, replay: null,
  }));
  // Router replay on the dense stream.
  let routers: ({ weights: RouterWeights; rule: RoutingRule } | null)[] | null = null;
  if (opts.replayRouters && moe.experts.some((e) => e !== null)) {
    if (dense.ffnIn.some((x, j) => x === null && moe.experts[j] !== null)) throw new MoefyError('router replay needs the dense model\'s FFN inputs');
    routers = moe.structure.blocks.map((b) => {
      if (!b.moe) return null;
      if (!b.moe.router) throw new MoefyError(`block ${b.index}: the router is not MatMul → GELU → MatMul → Abs (→ square)`);
      return { weights: b.moe.router, rule: b.moe.routing };
    });
    accs.forEach((acc) => (acc.replay = Array.from({ length: nL }, () => new Float64Array(S))));
  }
  const ceD = new Float64Array(S);
  const V0 = ds.vocab ?? 0;
  const batch = Math.max(1, opts.batch ?? Math.max(1, Math.min(16, Math.floor(256e6 / (4 * L * Math.max(V0, 1) * 2)))));
  const feedNames = (side: EvalSide) => side.feeds;
  for (let a = 0; a < samples; a += batch) {
    const b = Math.min(samples, a + batch);
    const feed = (side: EvalSide) => Object.fromEntries(feedNames(side).map((n) => [n, asInputType(side, n, sliceSamples(inputs[n], a, b) as ort.Tensor)]));
    const rd = await dense.session.run(feed(dense));
    const ld = floatView(rd[dense.logits]);
    const V = rd[dense.logits].dims[rd[dense.logits].dims.length - 1];
    const rows = (b - a) * L;
    if (ld.length !== rows * V) throw new MoefyError(`dense logits have shape [${rd[dense.logits].dims.join(', ')}]; expected [${b - a}, ${L}, V]`);
    // Dense log-normaliser and CE, once per batch.
    const lseD = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      const o = r * V;
      let m = -Infinity;
      for (let v = 0; v < V; v++) if (ld[o + v] > m) m = ld[o + v];
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(ld[o + v] - m);
      lseD[r] = m + Math.log(s);
    }
    if (gtData) {
      for (let r = 0; r < rows; r++) {
        const i = a * L + r;
        const t = Number(gtData[i]);
        ceD[scaleOf[r % L]] += lseD[r] - ld[r * V + t];
      }
    }
    for (let k = 0; k < settings.length; k++) {
      const acc = accs[k];
      const f = feed(moe);
      if (moe.hasThresholdInput) f[THRESHOLD_INPUT] = thresholdTensor(settings[k] ?? moe.thresholdDefault!);
      const rm = await moe.session.run(f);
      const lm = floatView(rm[moe.logits]);
      if (lm.length !== ld.length) throw new MoefyError(`the models' logits differ in shape ([${rd[dense.logits].dims.join(', ')}] and [${rm[moe.logits].dims.join(', ')}])`);
      for (let r = 0; r < rows; r++) {
        const o = r * V;
        const sc = scaleOf[r % L];
        let m = -Infinity, am = 0, ad = 0, md = -Infinity;
        for (let v = 0; v < V; v++) {
          if (lm[o + v] > m) {
            m = lm[o + v];
            am = v;
          }
          if (ld[o + v] > md) {
            md = ld[o + v];
            ad = v;
          }
        }
        let s = 0;
        for (let v = 0; v < V; v++) s += Math.exp(lm[o + v] - m);
        const lse = m + Math.log(s);
        let kl = 0;
        for (let v = 0; v < V; v++) {
          const lpd = ld[o + v] - lseD[r];
          const p = Math.exp(lpd);
          if (p > 0) kl += p * (lpd - (lm[o + v] - lse));
        }
        acc.kl[sc] += Math.max(0, kl);
        acc.agree[sc] += am === ad ? 1 : 0;
        acc.n[sc] += 1;
        if (gtData) acc.ceM[sc] += lse - lm[o + Number(gtData[a * L + r])];
      }
      for (let j = 0; j < nL; j++) {
        const yd = floatView(rd[dense.ffnOut[j]]);
        const ym = floatView(rm[moe.ffnOut[j]]);
        if (yd.length !== ym.length || yd.length % rows !== 0) throw new MoefyError(`FFN ${j}: outputs differ in size (${yd.length} and ${ym.length})`);
        const D = yd.length / rows;
        for (let r = 0; r < rows; r++) {
          const sc = scaleOf[r % L];
          let d2 = 0, y2 = 0;
          for (let c = r * D; c < (r + 1) * D; c++) {
            const d = ym[c] - yd[c];
            d2 += d * d;
            y2 += yd[c] * yd[c];
          }
          acc.diff2[j][sc] += d2;
          acc.ref2[j][sc] += y2;
        }
        const rw = routers?.[j];
        if (rw && acc.replay) {
          const thr = settings[k] ?? moe.thresholdDefault ?? Array(S).fill(0);
          const X = floatView(rd[dense.ffnIn[j]!]);
          const sel: number[] = [];
          for (let r = 0; r < rows; r++) {
            const sc = scaleOf[r % L];
            if (thr[sc] > 0) sel.push(r);
            else acc.replay[j][sc] += rw.weights.E;
          }
          // One threshold per scale: replay per scale group.
          const bySc = new Map<number, number[]>();
          sel.forEach((r, i) => {
            const sc = scaleOf[r % L];
            if (!bySc.has(sc)) bySc.set(sc, []);
            bySc.get(sc)!.push(i);
          });
          for (const [sc, idx] of bySc) {
            const a2 = replayActive(rw.weights, rw.rule, X, idx.map((i) => sel[i]), thr[sc]);
            for (const v of a2) acc.replay[j][sc] += v;
          }
        }
        const an = moe.active[j];
        if (an) {
          const act = rm[an].data as Int32Array;
          for (let r = 0; r < rows; r++) acc.active[j][scaleOf[r % L]] += act[r];
          if (opts.keepActiveOf !== undefined && opts.keepActiveOf >= a && opts.keepActiveOf < b) {
            acc.activeMap ??= Array.from({ length: nL }, () => new Int32Array(L));
            acc.activeMap[j].set(act.subarray((opts.keepActiveOf - a) * L, (opts.keepActiveOf - a + 1) * L));
          }
        }
      }
    }
    opts.onProgress?.(b, samples);
  }
  const reports = settings.map((setting, k) => buildReport(dense, moe, accs[k], ceD, gtData !== null, samples, setting, opts));
  return { reports, activeMaps: accs.map((x) => x.activeMap) };
}

function buildReport(dense: EvalSide, moe: EvalSide, acc: Acc, ceD: Float64Array, hasGt: boolean, samples: number, setting: number[] | null, opts: EvalOptions): EvalReport {
  const nL = dense.ffnOut.length;
  const thresholds = setting ?? moe.thresholdDefault;
  const isMoeModel = moe.experts.some((e) => e !== null);
  const fromScale = moe.fromScale;
  const rowsPer = dense.structure.rowsPerSample;
  const scales: ScaleEval[] = dense.flops.scales.map((fs) => {
    const s = fs.scale - 1;
    const n = acc.n[s];
    const thr = thresholds ? thresholds[s] : null;
    const byFrom = opts.moeScalesBy !== 'threshold' && fromScale !== null && fs.scale >= fromScale;
    const moeScale = isMoeModel && (byFrom || (thr ?? 0) > 0);
    const perLayer = moe.experts.map((E, j) => (E && moe.active[j] ? acc.active[j][s] / (n * E) : E ? null : 1));
    const known = perLayer.filter((x): x is number => x !== null);
    const measured = known.length ? known.reduce((x, y) => x + y, 0) / known.length : 1;
    const activeFraction = moeScale ? measured : 1;
    // Routers run on every token of every scale of a converted model.
    const m = isMoeModel ? moeFfnFlops(fs.flops.ffn, activeFraction, moe.routerPerToken, fs.tokens, rowsPer) : { ffn: fs.flops.ffn, router: 0 };
    const expertsPerLayer = moe.experts.filter((e): e is number => e !== null);
    const meanE = expertsPerLayer.length ? expertsPerLayer.reduce((x, y) => x + y, 0) / expertsPerLayer.length : null;
    const activeExperts = isMoeModel ? moe.experts.reduce((x: number, E, j) => x + (E ? (moe.active[j] ? acc.active[j][s] / n : E) : 0), 0) / expertsPerLayer.length : null;
    let activeFractionDenseStream: number | null = null, ffnFlopsMoeDenseStream: number | null = null;
    if (acc.replay) {
      const fr = moe.experts.map((E, j) => (E ? acc.replay![j][s] / (n * E) : null)).filter((x): x is number => x !== null);
      activeFractionDenseStream = moeScale ? fr.reduce((x, y) => x + y, 0) / fr.length : 1;
      ffnFlopsMoeDenseStream = moeFfnFlops(fs.flops.ffn, activeFractionDenseStream, moe.routerPerToken, fs.tokens, rowsPer).ffn;
    }
    const ceDense = hasGt ? ceD[s] / n : null;
    const ceMoe = hasGt ? acc.ceM[s] / n : null;
    return {
      scale: fs.scale, patch: fs.patch, tokens: fs.tokens, threshold: thr, moe: moeScale,
      kl: acc.kl[s] / n, top1: acc.agree[s] / n, ceDense, ceMoe, ceIncrease: hasGt ? ceMoe! - ceDense! : null,
      ffnRelErr: Array.from({ length: nL }, (_, j) => (acc.ref2[j][s] > 0 ? Math.sqrt(acc.diff2[j][s] / acc.ref2[j][s]) : Math.sqrt(acc.diff2[j][s]))),
      activeExperts, activeExpertsDense: meanE, activeFraction, activeFractionPerLayer: perLayer, activeFractionDenseStream, ffnFlopsMoeDenseStream,
      ffnFlopsDense: fs.flops.ffn, ffnFlopsMoe: m.ffn, routerFlops: m.router,
      flopsDense: fs.total, flopsMoe: fs.total - fs.flops.ffn + m.ffn,
    };
  });
  const summary = (list: ScaleEval[]): EvalSummary => {
    const tok = list.reduce((a, x) => a + acc.n[x.scale - 1], 0);
    const w = (f: (x: ScaleEval) => number) => list.reduce((a, x) => a + f(x) * acc.n[x.scale - 1], 0) / tok;
    const ffnD = list.reduce((a, x) => a + x.ffnFlopsDense, 0);
    return {
      tokens: tok, kl: w((x) => x.kl), top1: w((x) => x.top1),
      ceDense: hasGt ? w((x) => x.ceDense!) : null, ceMoe: hasGt ? w((x) => x.ceMoe!) : null, ceIncrease: hasGt ? w((x) => x.ceIncrease!) : null,
      activeFraction: ffnD ? list.reduce((a, x) => a + x.ffnFlopsDense * x.activeFraction, 0) / ffnD : 1,
      ffnFlopsDense: ffnD, ffnFlopsMoe: list.reduce((a, x) => a + x.ffnFlopsMoe, 0),
      flopsDense: list.reduce((a, x) => a + x.flopsDense, 0), flopsMoe: list.reduce((a, x) => a + x.flopsMoe, 0),
    };
  };
  const moeList = scales.filter((x) => x.moe);
  return {
    dense: opts.names?.dense ?? dense.file, moe: opts.names?.moe ?? moe.file, inputs: opts.names?.inputs ?? '', samples, groundTruth: hasGt,
    thresholds, fromScale, scales, totals: summary(scales),
    moeScales: { ...summary(moeList.length ? moeList : []), scales: moeList.map((x) => x.scale) },
  };
}
