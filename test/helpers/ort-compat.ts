// ONNX Runtime version compatibility of libmoefy_ops.so: converted fixtures run in a chosen ONNX Runtime build
// (onnxruntime-node's libonnxruntime.so of that version, fetched by scripts/fetch-ort.js into .cache/ort/) with
// moefy's kernel registered, against the same runtime running the op's function body, with the calibrated
// thresholds and with moe_threshold fed. One ONNX Runtime per process: each version runs in a child process
// (this file with --child).
//
//   node dist/test/helpers/ort-compat.js --minors 1.17    every minor from the floor on, a Markdown table
//   node dist/test/helpers/ort-compat.js 1.21.1 1.30.0
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Tensor } from 'onnxruntime-common';
import { createSession, dynamicMoeReference, libPath, ortVersion } from '../../src/runtime';
import { ROUTING_RULES } from '../../src/op';
import { buildDynamicMoeModel, randomArray, rng } from './test-models';
import { fromHalfBits, toHalfBits } from './half';
import { convert } from '../../src/pipeline';
import { fixture, readIo, repoRoot, rmDir, tmpDir } from './fixtures';
import { FAST } from './fast';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { findOrtHeaders } = require(path.join(repoRoot, 'scripts', 'build-native.js')) as { findOrtHeaders(): string };
// eslint-disable-next-line @typescript-eslint/no-require-imports
const fetchOrt = require(path.join(repoRoot, 'scripts', 'fetch-ort.js')) as {
  ortLibrary(v: string): string;
  newestPerMinor(from: string): string[];
};

/** libonnxruntime.so of `version` under .cache/ort/ (fetched from the npm registry when absent). */
export const ortLibrary = (version: string): string => fetchOrt.ortLibrary(version);

export const COMPAT_MODELS = [
  { name: 'full graph', model: 'var_tiny_full.onnx', io: 'var_tiny_full_io' },
  { name: 'static step graph', model: 'var_tiny_step_last_static.onnx', io: 'var_tiny_step_last_static_io' },
];

export interface ModelResult {
  name: string;
  /** max |kernel - function body| / max |function body| over the outputs: calibrated thresholds, then moe_threshold fed */
  errDefault: number;
  errFed: number;
  /** the fed thresholds changed the output (the feed reached the kernel) */
  feedChanged: boolean;
}
export interface VersionResult {
  version: string;
  ok: boolean;
  error?: string;
  /** moefy's kernel was created in the registered sessions (MOEFY_KERNEL_TRACE), not the function body run */
  kernelRan?: boolean;
  /** a one-node float16 DynamicMoE (T = float16) against the TypeScript reference: relative L2 error */
  f16Err?: number;
  /** contract version 2: every routing rule with skip_bias, kernel and function body against the reference */
  v2?: ContractV2Result;
  models: ModelResult[];
}

/**
 * Builds kernels/test/register_host.cc (a minimal C++ host that requests C API 14, so it runs on runtimes below the
 * library's floor) into dir; returns a function registering libmoefy_ops.so in a given runtime: "registered" or
 * "error: <status message>".
 */
export function registerHost(dir: string): (version: string) => string {
  const host = path.join(dir, 'register_host');
  const b = spawnSync('g++', ['-std=c++17', '-O1', `-I${findOrtHeaders()}`, `-I${path.join(repoRoot, 'kernels', 'src')}`,
    path.join(repoRoot, 'kernels', 'test', 'register_host.cc'), '-ldl', '-o', host], { encoding: 'utf8' });
  if (b.status !== 0) throw new Error(`g++ failed: ${b.stderr}`);
  return (version: string) => {
    const r = spawnSync(host, [fetchOrt.ortLibrary(version), libPath()], { encoding: 'utf8', env: { ...process.env, ORT_DISABLE_TELEMETRY: '1' } });
    if (r.status !== 0) return `host exit ${r.status} ${r.signal ?? ''} ${r.stderr.trim()}`;
    return r.stdout.split('\n').find((l) => l === 'registered' || l.startsWith('error: ')) ?? r.stdout.trim();
  };
}

/** Converts the compatibility fixtures once (experts skipped from scale 1 on, so the kernel really routes). */
export async function convertCompatModels(dir: string): Promise<{ name: string; file: string; io: string }[]> {
  const out = [];
  for (const m of COMPAT_MODELS) {
    const file = path.join(dir, m.model.replace(/\.onnx$/, '.moe.onnx'));
    await convert(fixture(m.model), { ...FAST, experts: 8, fromScale: 1, thresholds: [0.3], output: file });
    out.push({ name: m.name, file, io: fixture(m.io) });
  }
  return out;
}

function relMaxErr(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    n = Math.max(n, Math.abs(b[i]));
  }
  return m / Math.max(n, 1e-12);
}

async function child(models: { name: string; file: string; io: string }[]): Promise<VersionResult> {
  const res: VersionResult = { version: ortVersion(), ok: true, models: [] };
  for (const m of models) {
    const io = readIo(m.io);
    const kern = await createSession(m.file, { intraOpNumThreads: 2 });
    const body = await createSession(m.file, { intraOpNumThreads: 2, registerMoefyOps: false });
    const feeds: Record<string, Tensor> = {};
    for (const n of kern.inputNames) feeds[n] = new Tensor(io[n].dtype as never, io[n].data as never, io[n].shape);
    const nScales = kern.overridableInitializerMetadata.find((x) => x.name === 'moe_threshold')?.dims[0];
    if (typeof nScales !== 'number') throw new Error(`${m.name}: moe_threshold is not an overridable initializer`);
    const fed = { ...feeds, moe_threshold: new Tensor('float32', new Float32Array(nScales).fill(0.6), [nScales]) };
    const err = async (f: Record<string, Tensor>) => {
      const a = await kern.run(f);
      const b = await body.run(f);
      let e = 0;
      for (const k of Object.keys(b)) e = Math.max(e, relMaxErr(a[k].data as Float32Array, b[k].data as Float32Array));
      return { e, out: a[kern.outputNames[0]].data as Float32Array };
    };
    const d = await err(feeds);
    const f = await err(fed);
    res.models.push({
      name: m.name,
      errDefault: d.e,
      errFed: f.e,
      feedChanged: relMaxErr(d.out, f.out) > 1e-4,
    });
    kern.release();
    body.release();
  }
  res.f16Err = await float16Check();
  res.v2 = await contractV2Check();
  res.ok = res.models.every((m) => m.errDefault < 1e-4 && m.errFed < 1e-4 && m.feedChanged) && res.f16Err < 1e-3 && contractV2Ok(res.v2);
  return res;
}

export interface ContractV2Result {
  /** relative L2 error against the reference, worst over the rules and feeds, of the kernel and the function body */
  kernelErr: number;
  bodyErr: number;
  /** active counts equal the reference's everywhere */
  activeExact: boolean;
  /** a skip_bias of the wrong shape: the run's error message (the process must survive it) */
  badShapeError: string;
}

export const contractV2Ok = (v: ContractV2Result): boolean =>
  v.kernelErr < 1e-5 && v.bodyErr < 1e-5 && v.activeExact && /skip_bias has shape \[3, 4\], expected \[4, 3\]/.test(v.badShapeError);

/** The routing rules, out-of-range thresholds and skip_bias (contract version 2) in this runtime. */
async function contractV2Check(): Promise<ContractV2Result> {
  const r = rng(9);
  const D = 12, E = 4, S = 5, L = 14, B = 2, patchNums = [1, 2, 3];
  const w = { W1: randomArray(r, D * E * S, 0.3), B1: randomArray(r, E * S, 0.1), W2: randomArray(r, E * S * D, 0.2), B2: randomArray(r, D, 0.1) };
  const skip = randomArray(r, E * D, 0.3);
  const X = randomArray(r, B * L * D), N = Float32Array.from(randomArray(r, B * L * E), Math.abs);
  const t = (a: Float32Array, d: number[]) => new Tensor('float32', a, d);
  const res: ContractV2Result = { kernelErr: 0, bodyErr: 0, activeExact: true, badShapeError: '' };
  for (const routing of ROUTING_RULES) {
    const model = buildDynamicMoeModel({ D, E, S, patchNums, threshold: [0, 0, 0], routing, weights: w, skipBias: skip, withThresholdInput: true, thresholdDefault: [0, 0.5, 0.8], withActive: true, withFunctionBody: true });
    const kern = await createSession(model, { intraOpNumThreads: 1 });
    const body = await createSession(model, { intraOpNumThreads: 1, registerMoefyOps: false });
    for (const thr of [[0.3, 0.6, 1.5], [NaN, -1, 0.7]]) {
      const ref = dynamicMoeReference({ X: t(X, [B, L, D]), norms: t(N, [B, L, E]), W1: t(w.W1, [D, E * S]), B1: t(w.B1, [E * S]), W2: t(w.W2, [E * S, D]), B2: t(w.B2, [D]), threshold: thr, skipBias: t(skip, [E, D]) }, { numExperts: E, activation: 'relu', patchNums, routing });
      const feeds = { X: t(X, [B, L, D]), norms: t(N, [B, L, E]), threshold: t(Float32Array.from(thr), [3]) };
      for (const [s, key] of [[kern, 'kernelErr'], [body, 'bodyErr']] as const) {
        const out = await s.run(feeds);
        res[key] = Math.max(res[key], relL2(out.Y.data as Float32Array, ref.Y.data as Float32Array));
        res.activeExact &&= (out.active.data as Int32Array).every((a, i) => a === (ref.active.data as Int32Array)[i]);
      }
    }
    kern.release();
    body.release();
  }
  const bad = await createSession(buildDynamicMoeModel({ D: 3, E: 4, S: 2, patchNums, threshold: [0.5, 0.5, 0.5], routing: 'topk', withB2: true, withSkipBiasInput: true }), { intraOpNumThreads: 1 });
  const z = (d: number[]) => t(new Float32Array(d.reduce((a, b) => a * b, 1)).fill(0.5), d);
  try {
    await bad.run({ X: z([1, 14, 3]), norms: z([1, 14, 4]), W1: z([3, 8]), B1: z([8]), W2: z([8, 3]), B2: z([3]), skip_bias: z([3, 4]) });
  } catch (e) {
    res.badShapeError = (e as Error).message;
  }
  bad.release();
  return res;
}

function relL2(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** The float16 kernel (registered beside the float32 one under the same op name) on a one-node model. */
async function float16Check(): Promise<number> {
  const r = rng(7);
  const D = 16, E = 4, S = 8, L = 14;
  const h = (n: number, sc: number) => toHalfBits(randomArray(r, n, sc));
  const w = { W1: h(D * E * S, 0.25), B1: h(E * S, 0.1), W2: h(E * S * D, 0.2), B2: h(D, 0.1) };
  const X = h(2 * L * D, 1), N = toHalfBits(Array.from(randomArray(r, 2 * L * E), Math.abs));
  const attrs = { patchNums: [1, 2, 3], threshold: [0, 0.5, 0.8] };
  const s = await createSession(buildDynamicMoeModel({ D, E, S, ...attrs, weights: w, dtype: 'float16' }), { intraOpNumThreads: 2 });
  const y = fromHalfBits((await s.run({ X: new Tensor('float16', X, [2, L, D]), norms: new Tensor('float16', N, [2, L, E]) })).Y.data as Uint16Array);
  s.release();
  const t = (d: Uint16Array, dims: number[]) => new Tensor('float32', fromHalfBits(d), dims);
  const ref = dynamicMoeReference(
    { X: t(X, [2, L, D]), norms: t(N, [2, L, E]), W1: t(w.W1, [D, E * S]), B1: t(w.B1, [E * S]), W2: t(w.W2, [E * S, D]), B2: t(w.B2, [D]) },
    { numExperts: E, activation: 'relu', ...attrs },
  ).Y.data as Float32Array;
  return relL2(y, ref);
}

/** Runs the check in a child process on ONNX Runtime `version` (fetched when absent). */
export function checkVersion(version: string, models: { name: string; file: string; io: string }[]): VersionResult {
  let lib: string;
  try {
    lib = fetchOrt.ortLibrary(version);
  } catch (e) {
    return { version, ok: false, error: `cannot fetch: ${(e as Error).message}`, models: [] };
  }
  const r = spawnSync(process.execPath, [__filename, '--child', JSON.stringify(models)], {
    encoding: 'utf8',
    env: { ...process.env, MOEFY_ORT_LIBRARY: lib, MOEFY_KERNEL_TRACE: '1', ORT_DISABLE_TELEMETRY: '1' },  // no mat-debug-*.log in the temp dir
    timeout: 300_000,
  });
  const line = (r.stdout || '').split('\n').find((l) => l.startsWith('{'));
  if (r.status !== 0 || !line) {
    const why = r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
    return { version, ok: false, error: `${why}: ${(r.stderr || '').trim().split('\n').slice(-2).join(' ')}`, models: [] };
  }
  const res = JSON.parse(line) as VersionResult;
  res.version = version;
  res.kernelRan = /DynamicMoE CPU kernel created/.test(r.stderr || '');
  res.ok = res.ok && res.kernelRan;
  return res;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args[0] === '--child') {
    try {
      process.stdout.write(JSON.stringify(await child(JSON.parse(args[1]))) + '\n');
    } catch (e) {
      process.stdout.write(JSON.stringify({ version: '', ok: false, error: (e as Error).message, models: [] }) + '\n');
    }
    return;
  }
  const versions = args[0] === '--minors' ? fetchOrt.newestPerMinor(args[1] ?? '1.17') : args;
  const dir = tmpDir('ort-compat');
  try {
    const models = await convertCompatModels(dir);
    const register = registerHost(dir);
    process.stdout.write('| ONNX Runtime | RegisterCustomOps | converted models | full graph: kernel vs function body (calibrated / fed) | static step graph | float16 kernel vs reference | routing rules + skip_bias: kernel / function body vs reference |\n|---|---|---|---|---|---|---|\n');
    for (const v of versions) {
      const reg = register(v);
      const r = checkVersion(v, models);
      const cell = (m?: ModelResult) => (m ? `${m.errDefault.toExponential(1)} / ${m.errFed.toExponential(1)}${m.feedChanged ? '' : ' (feed ignored)'}` : '-');
      const run = r.ok ? 'match' : r.models.length ? `fail: ${r.kernelRan ? 'mismatch' : 'kernel not used'}` : `not run (${r.error})`;
      process.stdout.write(`| ${v} | ${reg === 'registered' ? 'ok' : reg.replace(/^error: /, 'error: "') + (reg.startsWith('error: ') ? '"' : '')} | ${run} | ${cell(r.models[0])} | ${cell(r.models[1])} | ${r.f16Err === undefined ? '-' : r.f16Err.toExponential(1)} | ${r.v2 ? `${r.v2.kernelErr.toExponential(1)} / ${r.v2.bodyErr.toExponential(1)}${contractV2Ok(r.v2) ? '' : ' (fail)'}` : '-'} |\n`);
    }
  } finally {
    rmDir(dir);
  }
}

if (require.main === module) {
  // As bin/moefy.js and npm test: ONNX Runtime's telemetry off (no mat-debug-*.log left in the temp dir).
  process.env.ORT_DISABLE_TELEMETRY ??= '1';
  main().catch((e) => {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exit(1);
  });
}
