// Generation with VAR's per-scale step graphs, dense and MoE side by side with identical random numbers: at each
// scale the step graph gives the (guided) logits, tokens are drawn with top-k then top-p sampling (VAR's
// sample_with_top_k_top_p_, by inverse CDF over the tokens in descending order so that close distributions draw the
// same token from the same uniform), and the tokenizer's next-scale graph (vq_nextscale_s{k}: f_hat and the sampled
// tokens → f_hat_new and the next step's input) — a second ONNX model, since the next-scale input needs the VQVAE's
// embedding — advances the state. Reported per scale: the fraction of sampled tokens on which the two independent
// chains agree, and, with the MoE step fed the dense chain's context (same input, same KV cache), the fraction of
// agreeing tokens, the KL of the next-token distributions and the experts run per token.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { deriveSeed, rng } from '../calib/random';
import { MoefyError } from '../errors';
import { pct, table } from '../format';
import { THRESHOLD_INPUT } from '../op';
import { TensorSetWriter } from '../io';
import { isKvInputName, isKvOutputName, kvInputFor } from '../analysis/var-structure';
import { inputRole, TEACHER_FORCING } from '../analysis/var-signature';
import { closeSide, EvalSide, openSide } from './side';
import { commitTemp, removeTemp, tempSibling } from '../files/temp';
import { writeImageGrid } from './image-grid';
import { sampleTopKTopP } from './sampling';
import { openAuxGraph, stepGraphs, vqGraphs } from './step-graphs';

export interface GenerateOptions {
  steps: string;
  moeSteps?: string;
  vq: string;
  decoder?: string;
  images?: string;
  samples: number;
  labels?: number[];
  cfg: number;
  topK: number;
  topP: number;
  seed: number;
  patchNums?: number[];
  /**
   * Write the dense chain's inputs of each step into <dir>/s{k}/ (calibration data for converting step graphs), and
   * the whole sequences into <dir>/full/ (label_B, x_BLCv_wo_first_l, gt_idx_BL: teacher-forcing calibration data for
   * the full-sequence graph, as VAR's training feeds it).
   */
  dumpCalib?: string;
  /** Threshold override fed to the MoE step graphs: one per scale, or one for the scales from each graph's from-scale on. */
  thresholds?: number[];
  /** Samples per run of the step graphs (default GENERATE_BATCH): bounds the memory; the results do not depend on it. */
  batch?: number;
}

/**
 * Samples per run: the KV caches of three runs per step and the chains' caches live at once, 2 rows per sample
 * with CFG (at VAR-d16's last step about 90 MB per sample and run).
 */
export const GENERATE_BATCH = 8;

export interface GenerateScale {
  scale: number;
  patch: number;
  tokens: number;
  moe: boolean;
  /** Sampled tokens equal between the independent dense and MoE chains. */
  agreement: number;
  /** Sampled tokens equal when the MoE step runs on the dense chain's context (same random numbers). */
  agreementGivenContext: number;
  /** Chance level: the probability that two independent draws from the dense distribution agree (Σ p², mean per token). */
  agreementChance: number;
  /** KL(dense ‖ MoE) of the guided next-token distributions on the dense chain's context, mean per token. */
  klGivenContext: number;
  /** Experts run per token (mean over tokens, layers and CFG rows) on the dense context; null for dense scales. */
  activeExperts: number | null;
  experts: number | null;
}

export interface GenerateReport {
  samples: number;
  labels: number[];
  cfg: number;
  topK: number;
  topP: number;
  seed: number;
  scales: GenerateScale[];
  /** Token-weighted over all scales. */
  agreement: number;
  agreementGivenContext: number;
  images: string | null;
}

interface Chain {
  fhat: ort.Tensor;
  xnext: ort.Tensor | null;
  past: Record<string, ort.Tensor>;
  idx: BigInt64Array[];
  /** Each next scale's input (next_in_BlCv), in order. */
  inputs: ort.Tensor[];
}

/** Concatenates [B, n_i, …] tensors along axis 1. */
function concatTokens<T extends Float32Array | BigInt64Array>(parts: { data: T; n: number }[], B: number, width: number, make: (n: number) => T): { data: T; n: number } {
  const n = parts.reduce((a, p) => a + p.n, 0);
  const out = make(B * n * width);
  for (let b = 0; b < B; b++) {
    let at = b * n * width;
    for (const p of parts) {
      out.set(p.data.subarray(b * p.n * width, (b + 1) * p.n * width) as never, at);
      at += p.n * width;
    }
  }
  return { data: out, n };
}

function f32Scalar(x: number): ort.Tensor {
  return new ort.Tensor('float32', Float32Array.of(x), []);
}

/** Per-scale sums over the batches. */
interface ScaleSums {
  tokens: number;
  agree: number;
  agreeC: number;
  kl: number;
  coll: number;
  active: number;
  activeCount: number;
  n: number;
  moe: boolean;
  experts: number | null;
}

export async function generate(o: GenerateOptions): Promise<GenerateReport> {
  const dense = stepGraphs(o.steps, o.patchNums);
  if (dense.size === 0) throw new MoefyError(`--steps ${o.steps}: no VAR step graph with a static scale found (var_step_s{k}.onnx, one per scale)`);
  const moe = o.moeSteps ? stepGraphs(o.moeSteps, o.patchNums) : new Map<number, string>();
  const vq = vqGraphs(o.vq);
  if (o.images && !o.decoder) throw new MoefyError('--images needs --decoder');
  const S = dense.size;
  for (let k = 0; k < S; k++) {
    if (!dense.has(k)) throw new MoefyError(`--steps: no step graph for scale ${k + 1} (found scales ${[...dense.keys()].map((x) => x + 1).join(',')})`);
    if (!vq.has(k)) throw new MoefyError(`--vq: no vq_nextscale_s${k}.onnx`);
  }
  for (const k of moe.keys()) if (!dense.has(k)) throw new MoefyError(`--moe-steps: scale ${k + 1} has no dense step graph`);
  const B = o.samples;
  if (!(Number.isInteger(B) && B >= 1)) throw new MoefyError(`--samples ${B} must be a positive integer`);
  const batch = o.batch ?? GENERATE_BATCH;
  if (!(Number.isInteger(batch) && batch >= 1)) throw new MoefyError(`--batch ${batch} must be a positive integer`);
  if (o.labels && o.labels.length !== B) throw new MoefyError(`--labels has ${o.labels.length} values for ${B} samples`);
  let labels = o.labels ?? [];
  const sides: { dense: EvalSide[]; moe: (EvalSide | null)[] } = { dense: [], moe: [] };
  const vqSess: ort.InferenceSession[] = [];
  let decoder: ort.InferenceSession | null = null;
  // The dump is written batch by batch into temporary folders, put in place only when every sample is done.
  let dumps: { steps: TensorSetWriter[]; full: TensorSetWriter } | null = null;
  // A dump folder that does not exist yet is made as a temporary sibling and renamed into place at the end.
  const newDumpDir = o.dumpCalib && !fs.existsSync(o.dumpCalib) ? tempSibling(o.dumpCalib) : null;
  let done = false;
  try {
    // The decoder runs last: a wrong one is found before the generation, not after it.
    if (o.decoder) decoder = await openAuxGraph(o.decoder, '--decoder', 'a VQVAE decoder', 'f_hat');
    for (let k = 0; k < S; k++) {
      sides.dense.push(await openSide(dense.get(k)!, { kind: 'step', keepOutputs: true, withFfn: false, patchNums: o.patchNums }));
      sides.moe.push(moe.has(k) ? await openSide(moe.get(k)!, { kind: 'step', keepOutputs: true, withFfn: false, patchNums: o.patchNums }) : null);
      vqSess.push(await openAuxGraph(vq.get(k)!, '--vq', "a tokenizer's next-scale graph", ['f_hat', 'idx_Bl']));
    }
    const fdims = vqSess[0].inputMetadata.find((m) => m.name === 'f_hat');
    const fshape = fdims && 'shape' in fdims ? (fdims.shape as (number | string)[]).slice(1).map(Number) : [32, 16, 16];
    if (fshape.some((x) => !Number.isFinite(x))) throw new MoefyError(`${vq.get(0)}: f_hat has no static shape`);
    const fsize = fshape.reduce((a, b) => a * b, 1);
    // By default the classes in turn (0, 1, …, classes − 1, 0, …).
    const classes = sides.dense[0].structure.classes;
    if (!o.labels) labels = Array.from({ length: B }, (_, i) => i % classes);
    const bad = labels.find((l) => !(Number.isInteger(l) && l >= 0 && l < classes));
    if (bad !== undefined) throw new MoefyError(`--labels: ${bad} is not a class of the model (0…${classes - 1})`);
    const layout = sides.dense[0].structure.layout;
    if (o.dumpCalib) {
      const root = newDumpDir ?? o.dumpCalib;
      if (newDumpDir) fs.mkdirSync(newDumpDir, { recursive: true });
      dumps = { steps: Array.from({ length: S }, (_, k) => new TensorSetWriter(path.join(root, `s${k}`))), full: new TensorSetWriter(path.join(root, 'full')) };
    }
    const sums: ScaleSums[] = Array.from({ length: S }, () => ({ tokens: 0, agree: 0, agreeC: 0, kl: 0, coll: 0, active: 0, activeCount: 0, n: 0, moe: false, experts: null }));
    const images: ort.Tensor[][] = [[], []];
    for (let a = 0; a < B; a += batch) {
      const b = Math.min(B, a + batch);
      await generateBatch(a, b);
    }

    async function generateBatch(a: number, b: number): Promise<void> {
      const nb = b - a;
      const label = new ort.Tensor('int64', BigInt64Array.from(labels.slice(a, b), (x) => BigInt(x)), [nb]);
      const zero = () => new ort.Tensor('float32', new Float32Array(nb * fsize), [nb, ...fshape]);
      const chains: Chain[] = [0, 1].map(() => ({ fhat: zero(), xnext: null, past: {}, idx: [], inputs: [] }));
      for (let k = 0; k < S; k++) {
        const d = sides.dense[k], m = sides.moe[k];
        const feedsOf = (c: Chain, side: EvalSide) => {
          const f: Record<string, ort.Tensor> = {};
          for (const n of side.feeds) {
            if (inputRole(n) === 'label') f[n] = label;
            else if (inputRole(n) === 'cfg') f[n] = f32Scalar(o.cfg);
            else if (isKvInputName(n)) {
              if (!c.past[n]) throw new MoefyError(`${side.file}: no '${n}' from the previous step`);
              f[n] = c.past[n];
            } else if (c.xnext) f[n] = c.xnext;
            else throw new MoefyError(`${side.file}: input '${n}' has no value (is scale ${k + 1}'s graph in the right place?)`);
          }
          if (side.hasThresholdInput) {
            const d = side.thresholdDefault!;
            const t = !o.thresholds ? d : o.thresholds.length === 1 ? d.map((_, s) => (s + 1 >= (side.fromScale ?? 1) ? o.thresholds![0] : 0)) : o.thresholds;
            if (t.length !== d.length) throw new MoefyError(`--threshold has ${t.length} values; ${side.file} has ${d.length} scales`);
            f[THRESHOLD_INPUT] = new ort.Tensor('float32', Float32Array.from(t), [t.length]);
          }
          return f;
        };
        const fD = feedsOf(chains[0], d);
        if (dumps)
          for (const [n, t] of Object.entries(fD)) {
            if (n === THRESHOLD_INPUT) continue;
            // A KV cache holds its rows per sample in blocks (CFG: B conditional rows, then B unconditional).
            dumps.steps[k].append(n, t, isKvInputName(n) && t.dims.length ? t.dims[0] / nb : 1);
          }
        const rD = await d.session.run(fD);
        const rM = await (m ?? d).session.run(feedsOf(chains[1], m ?? d));
        const rC = m ? await m.session.run(feedsOf(chains[0], m)) : rD;
        const lg = (r: ort.InferenceSession.OnnxValueMapType, side: EvalSide) => r[side.logits];
        const tD = lg(rD, d);
        const V = tD.dims[tD.dims.length - 1];
        const n = tD.dims[1];
        if (n !== layout.tokens[k]) throw new MoefyError(`${d.file}: logits have ${n} tokens at scale ${k + 1}; expected ${layout.tokens[k]}`);
        const order = new Int32Array(V), probs = new Float64Array(V);
        // Each sample's uniforms by its index in the whole run: the tokens do not depend on the batch size.
        const draw = (t: ort.Tensor) => {
          const data = t.data as Float32Array;
          const out = new BigInt64Array(nb * n);
          for (let i = 0; i < nb; i++) {
            const r = rng(deriveSeed(o.seed, k * 1_000_003 + a + i));
            for (let j = 0; j < n; j++) out[i * n + j] = BigInt(sampleTopKTopP(data, (i * n + j) * V, V, o.topK, o.topP, r(), order, probs));
          }
          return out;
        };
        const iD = draw(tD), iM = draw(lg(rM, m ?? d)), iC = draw(lg(rC, m ?? d));
        const sc = sums[k];
        for (let i = 0; i < iD.length; i++) {
          if (iD[i] === iM[i]) sc.agree++;
          if (iD[i] === iC[i]) sc.agreeC++;
        }
        sc.tokens += iD.length;
        sc.n = n;
        {
          const x = tD.data as Float32Array, c = lg(rC, m ?? d).data as Float32Array;
          for (let r = 0; r < nb * n; r++) {
            const off = r * V;
            let ma = -Infinity, mc = -Infinity;
            for (let v = 0; v < V; v++) {
              if (x[off + v] > ma) ma = x[off + v];
              if (c[off + v] > mc) mc = c[off + v];
            }
            let za = 0, zc = 0;
            for (let v = 0; v < V; v++) {
              za += Math.exp(x[off + v] - ma);
              zc += Math.exp(c[off + v] - mc);
            }
            const la = ma + Math.log(za), lc = mc + Math.log(zc);
            let s = 0;
            for (let v = 0; v < V; v++) {
              const lp = x[off + v] - la;
              const p = Math.exp(lp);
              s += p * (lp - (c[off + v] - lc));
              sc.coll += p * p;
            }
            sc.kl += Math.max(0, s);
          }
        }
        if (m) {
          sc.moe = true;
          const names = m.active.filter((x): x is string => x !== null);
          if (names.length) {
            for (const nm of names) {
              const t = rC[nm].data as Int32Array;
              for (let i = 0; i < t.length; i++) sc.active += t[i];
              sc.activeCount += t.length;
            }
            const es = m.experts.filter((e): e is number => e !== null);
            sc.experts = es.reduce((x, y) => x + y, 0) / es.length;
          }
        }
        // Advance both chains.
        for (const [c, r, ids] of [[chains[0], rD, iD], [chains[1], rM, iM]] as const) {
          const v = await vqSess[k].run({ f_hat: c.fhat, idx_Bl: new ort.Tensor('int64', ids, [nb, n]) });
          c.fhat = v['f_hat_new'];
          c.xnext = v['next_in_BlCv'] ?? null;
          if (c.xnext) c.inputs.push(c.xnext);
          c.past = {};
          for (const [name, t] of Object.entries(r)) if (isKvOutputName(name)) c.past[kvInputFor(name)] = t;
          c.idx.push(ids);
        }
      }
      if (dumps) {
        const c = chains[0];
        const Cv = c.inputs[0]?.dims[2] ?? 0;
        const x = concatTokens(c.inputs.map((t) => ({ data: t.data as Float32Array, n: t.dims[1] })), nb, Cv, (n) => new Float32Array(n));
        const ids = concatTokens(c.idx.map((d, k) => ({ data: d, n: layout.tokens[k] })), nb, 1, (n) => new BigInt64Array(n));
        dumps.full.append(TEACHER_FORCING.label, label);
        dumps.full.append(TEACHER_FORCING.tokens, new ort.Tensor('float32', x.data, [nb, x.n, Cv]));
        dumps.full.append(TEACHER_FORCING.groundTruth, new ort.Tensor('int64', ids.data, [nb, ids.n]));
      }
      if (decoder && o.images) for (const [j, c] of chains.entries()) images[j].push((await decoder.run({ [decoder.inputNames[0]]: c.fhat }))[decoder.outputNames[0]]);
    }

    if (dumps) {
      for (const w of dumps.steps) await w.commit();
      await dumps.full.commit();
      if (newDumpDir) commitTemp(newDumpDir, o.dumpCalib!);
    }
    let imageFile: string | null = null;
    if (decoder && o.images) {
      writeImageGrid(o.images, images.map(concatBatch));
      imageFile = o.images;
    }
    const scales: GenerateScale[] = sums.map((sc, k) => ({
      scale: k + 1, patch: layout.patchNums[k], tokens: sc.n, moe: sc.moe, agreement: sc.agree / sc.tokens, agreementGivenContext: sc.agreeC / sc.tokens,
      agreementChance: sc.coll / sc.tokens, klGivenContext: sc.kl / sc.tokens, activeExperts: sc.activeCount ? sc.active / sc.activeCount : null, experts: sc.activeCount ? sc.experts : null,
    }));
    const tok = scales.reduce((a, x) => a + x.tokens, 0);
    done = true;
    return {
      samples: B, labels, cfg: o.cfg, topK: o.topK, topP: o.topP, seed: o.seed, scales,
      agreement: scales.reduce((a, x) => a + x.agreement * x.tokens, 0) / tok,
      agreementGivenContext: scales.reduce((a, x) => a + x.agreementGivenContext * x.tokens, 0) / tok,
      images: imageFile,
    };
  } finally {
    if (dumps && !done) for (const w of [...dumps.steps, dumps.full]) w.discard();
    if (!done && newDumpDir) removeTemp(newDumpDir);
    for (const s of [...sides.dense, ...sides.moe]) if (s) await closeSide(s);
    for (const s of vqSess) await s.release();
    if (decoder) await decoder.release();
  }
}

/** [b_i, …] tensors of one type joined along axis 0. */
function concatBatch(ts: ort.Tensor[]): ort.Tensor {
  const per = ts[0].dims.slice(1);
  const data = new Float32Array(ts.reduce((a, t) => a + t.data.length, 0));
  let at = 0;
  for (const t of ts) {
    data.set(t.data as Float32Array, at);
    at += t.data.length;
  }
  return new ort.Tensor('float32', data, [ts.reduce((a, t) => a + t.dims[0], 0), ...per]);
}

export function printGenerate(r: GenerateReport): string {
  const rows = r.scales.map((s) => [s.scale, `${s.patch}x${s.patch}`, s.moe ? 'MoE' : 'dense', pct(s.agreement), pct(s.agreementGivenContext), pct(s.agreementChance), s.klGivenContext.toFixed(5), s.activeExperts === null ? '-' : `${s.activeExperts.toFixed(2)}/${s.experts}`]);
  return [
    `generation: ${r.samples} samples, labels ${r.labels.join(',')}, cfg ${r.cfg}, top-k ${r.topK}, top-p ${r.topP}, seed ${r.seed} (identical random numbers for dense and MoE)`,
    table(['scale', 'patch', 'step', 'agree (chains)', 'agree (dense context)', 'chance', 'KL (dense context)', 'experts'], rows),
    `sampled tokens agreeing: ${pct(r.agreement)} between the chains, ${pct(r.agreementGivenContext)} on the dense context${r.images ? `\nimages (dense row above MoE row): ${r.images}` : ''}`,
  ].join('\n');
}
