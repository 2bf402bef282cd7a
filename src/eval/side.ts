// One side of an evaluation (the dense model or the MoE model): the model analysed, a temporary copy whose graph
// outputs add every FFN output (and, for DynamicMoE blocks, the `active` counts), and an onnxruntime-node session on
// it. Stock onnxruntime-node runs the DynamicMoE op through its function body (correct, not fast).
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { analyseVar, VarStructure } from '../analysis/var-structure';
import { countFlops, FlopReport, routerFlopsPerToken } from '../analysis/flops';
import { MoefyError } from '../errors';
import { ortMessage } from '../format';
import { Model } from '../ir/model';
import { Value } from '../ir/graph';
import { loadModel, saveCopy } from '../onnx/io';
import { removeTemp, tempDir } from '../files/temp';
import { THRESHOLD_INPUT } from '../op';

export interface EvalSide {
  file: string;
  model: Model;
  structure: VarStructure;
  flops: FlopReport;
  /** Name of the logits output. */
  logits: string;
  /** FFN output value name per block (the FFN's Y, before the AdaLN gate). */
  ffnOut: string[];
  /** FFN input value name per dense block (exposed with `withFfnIn`), else null. */
  ffnIn: (string | null)[];
  /** `active` output per block for DynamicMoE blocks, else null. */
  active: (string | null)[];
  /** Experts per block (null for dense blocks). */
  experts: (number | null)[];
  /** Σ over MoE layers of the router FLOPs per token. */
  routerPerToken: number;
  /** The model's `moe_threshold` default (initializer), when it has that input. */
  thresholdDefault: number[] | null;
  /** First MoE scale (1-based) from the conversion metadata, else from the first non-zero default threshold. */
  fromScale: number | null;
  /** Graph inputs the caller must feed besides `moe_threshold` (initializer-backed inputs excluded). */
  feeds: string[];
  /** The model has a `moe_threshold` input with defaults; the eval copy requires it (feed thresholdDefault or an override). */
  hasThresholdInput: boolean;
  session: ort.InferenceSession;
  dir: string;
}

function moeInfo(structure: VarStructure): { routerPerToken: number; thresholdDefault: number[] | null; fromScale: number | null; experts: (number | null)[] } {
  let routerPerToken = 0;
  const experts = structure.blocks.map((b) => (b.moe ? b.moe.experts : null));
  for (const b of structure.blocks) if (b.moe) routerPerToken += routerFlopsPerToken(b.moe.D, b.moe.routerWidth ?? 0, b.moe.experts);
  return { routerPerToken, thresholdDefault: structure.moe?.thresholds ?? null, fromScale: structure.moe?.fromScale ?? null, experts };
}

export interface SideOptions {
  patchNums?: number[];
  /** 'full' (teacher forcing) or 'step' graphs; checked. */
  kind?: 'full' | 'step';
  /** Extra graph outputs to keep besides logits/FFN/active (e.g. present_* for step graphs). */
  keepOutputs?: boolean;
  withFfn?: boolean;
  /** Also expose the dense blocks' FFN inputs (to replay a MoE model's routers on them). */
  withFfnIn?: boolean;
}

export async function openSide(file: string, opts: SideOptions = {}): Promise<EvalSide> {
  if (!fs.existsSync(file)) throw new MoefyError(`${file}: no such file`);
  const model = loadModel(file);
  const structure = analyseVar(model, { patchNums: opts.patchNums });
  const kind = opts.kind ?? 'full';
  if (structure.kind !== kind)
    throw new MoefyError(`${file} is a ${structure.kind === 'step' ? 'KV-cached step' : 'full-sequence'} graph; ${kind === 'full' ? 'teacher-forced eval needs full-sequence graphs (step graphs: moefy eval generate --steps …)' : 'eval generate needs step graphs (--steps)'}`);
  const flops = countFlops(model, structure, 1);
  const g = model.graph;
  const logits = structure.logits;
  const withFfn = opts.withFfn ?? true;
  const ffnOut: Value[] = [];
  const active: (Value | null)[] = [];
  for (const b of structure.blocks) {
    if (b.moe) {
      ffnOut.push(b.moe.node.output(0));
      const a = b.moe.node.outputs[1] ?? null;
      active.push(a);
    } else if (b.ffn) {
      ffnOut.push(b.ffn.output);
      active.push(null);
    }
  }
  const info = moeInfo(structure);
  const saved = g.outputs;
  const outs: Value[] = opts.keepOutputs ? [...saved] : [logits];
  const add = (v: Value | null) => {
    if (v && !outs.includes(v)) outs.push(v);
  };
  if (withFfn) ffnOut.forEach(add);
  const ffnIn = structure.blocks.map((b) => (b.ffn && opts.withFfnIn ? b.ffn.ffnIn : null));
  ffnIn.forEach(add);
  active.forEach(add);
  const dir = tempDir('eval');
  const tmp = path.join(dir, 'eval.onnx');
  // onnxruntime-node feeds only the inputs it lists, and it does not list initializer-backed inputs: in the copy the
  // eval runs, `moe_threshold` becomes a plain input (always fed: the model's defaults unless overridden).
  const thrV = structure.moe?.thresholdInput ?? null;
  const hasThresholdInput = thrV?.tensor !== undefined;
  saveCopy(model, tmp, { outputs: outs, plainInputs: thrV ? [thrV] : [] });
  let session: ort.InferenceSession;
  try {
    // Errors only: float16 models make ORT warn for every node it cannot constant-fold.
    session = await ort.InferenceSession.create(tmp, { graphOptimizationLevel: 'all', logSeverityLevel: 3 });
  } catch (e) {
    removeTemp(dir);
    throw new MoefyError(`${file}: ONNX Runtime cannot open the model: ${ortMessage((e as Error).message)}`);
  }
  const feeds = g.inputs.filter((v) => !v.tensor && v.name !== THRESHOLD_INPUT).map((v) => v.name);
  return {
    file, model, structure, flops, logits: logits.name,
    ffnOut: ffnOut.map((v) => v.name), ffnIn: ffnIn.map((v) => v?.name ?? null), active: active.map((v) => v?.name ?? null),
    experts: info.experts, routerPerToken: info.routerPerToken, thresholdDefault: info.thresholdDefault, fromScale: info.fromScale,
    feeds, hasThresholdInput, session, dir,
  };
}

export async function closeSide(s: EvalSide): Promise<void> {
  await s.session.release();
  removeTemp(s.dir);
}

export function thresholdTensor(t: number[]): ort.Tensor {
  return new ort.Tensor('float32', Float32Array.from(t), [t.length]);
}
