// The graphs of VAR's sampling loop found by the user's paths: the per-scale step graphs (by their static scale) and
// the tokenizer's next-scale graphs (vq_nextscale_s{k}.onnx).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { analyseVar } from '../analysis/var-structure';
import { MoefyError } from '../errors';
import { ortMessage } from '../format';
import { loadModel } from '../onnx/io';
import type { Model } from '../ir/model';
import * as ort from 'onnxruntime-node';

/** Files of a folder or a comma-separated list. */
function listFiles(spec: string): string[] {
  if (fs.existsSync(spec) && fs.statSync(spec).isDirectory()) return fs.readdirSync(spec).filter((f) => f.endsWith('.onnx')).sort().map((f) => path.join(spec, f));
  const files = spec.split(',').map((s) => s.trim()).filter(Boolean);
  for (const f of files) if (!fs.existsSync(f)) throw new MoefyError(`${f}: no such file`);
  return files;
}

/** Step graphs by 0-based scale, from each graph's static step scale. Files that are not VAR step graphs are skipped in folders. */
export function stepGraphs(spec: string, patchNums?: number[]): Map<number, string> {
  const isDir = fs.existsSync(spec) && fs.statSync(spec).isDirectory();
  const out = new Map<number, string>();
  for (const f of listFiles(spec)) {
    if (isDir && !/step/i.test(path.basename(f))) continue;
    let scale: number | null;
    try {
      const s = analyseVar(loadModel(f), { patchNums });
      scale = s.kind === 'step' ? s.stepScale : null;
    } catch (e) {
      if (isDir) continue;
      throw e;
    }
    if (scale === null) throw new MoefyError(`${f} is not a step graph with a static scale`);
    if (out.has(scale - 1)) throw new MoefyError(`${f} and ${out.get(scale - 1)} are both step graphs of scale ${scale}`);
    out.set(scale - 1, f);
  }
  return out;
}

/**
 * An ONNX Runtime session on an auxiliary graph (a tokenizer's next-scale graph, the decoder), read by moefy first so
 * that a damaged or foreign file is one line naming the flag; `inputs` are the graph inputs the caller will feed
 * (checked by name), or a count of float inputs of rank 4 (a decoder takes f_hat [B, C, h, w]).
 */
export async function openAuxGraph(file: string, flag: string, what: string, inputs: string[] | 'f_hat'): Promise<ort.InferenceSession> {
  let m: Model;
  try {
    m = loadModel(file);
  } catch (e) {
    throw e instanceof MoefyError ? new MoefyError(`${flag} ${e.message}`) : e;
  }
  const real = m.graph.inputs.filter((v) => !v.tensor);
  const names = real.map((v) => v.name).join(', ');
  if (inputs === 'f_hat') {
    if (real.length !== 1 || real[0].shape()?.length !== 4 || m.graph.outputs.length < 1)
      throw new MoefyError(`${flag} ${file} is not ${what}: it takes ${names || 'no input'} (a decoder takes one input, f_hat [B, C, h, w], and gives the image)`);
  } else {
    const missing = inputs.filter((n) => !real.some((v) => v.name === n));
    if (missing.length) throw new MoefyError(`${flag} ${file} is not ${what}: it takes ${names || 'no input'}, not ${inputs.join(' and ')}`);
  }
  try {
    return await ort.InferenceSession.create(file, { logSeverityLevel: 3 });
  } catch (e) {
    throw new MoefyError(`${flag} ${file}: ONNX Runtime cannot open it: ${ortMessage((e as Error).message)}`);
  }
}

/** vq_nextscale_s{k}.onnx by 0-based scale. */
export function vqGraphs(spec: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const f of listFiles(spec)) {
    const m = /nextscale_s(\d+)\.onnx$/.exec(path.basename(f));
    if (m) out.set(Number(m[1]), f);
  }
  return out;
}
