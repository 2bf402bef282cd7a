// Shared test helpers: where the repository and the shared fixtures are, what each fixture is (taken from the
// fixtures' README and var_tiny_meta.json, never from the code under test), reading the *_io test vectors,
// temporary folders and running the CLI as a child process.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

/** The repository root: the nearest folder above this file holding moefy's package.json (works from src and dist). */
export const repoRoot: string = (() => {
  let d = __dirname;
  for (;;) {
    const pj = path.join(d, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'moefy') return d;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(d);
    if (up === d) throw new Error(`no moefy package.json above ${__dirname}`);
    d = up;
  }
})();

/** ../shared/fixtures beside the repository (CI clones the repo next to shared/). */
export const FIXTURES = path.resolve(repoRoot, '..', 'shared', 'fixtures');
export const TRAINED = path.join(FIXTURES, 'trained');
export const GELU_STEPS = path.join(TRAINED, 'gelu_steps');
export const fixture = (...p: string[]) => path.join(FIXTURES, ...p);

/** var_tiny_meta.json as written by the exporter. */
export interface TinyMeta {
  depth: number;
  C: number;
  heads: number;
  head_dim: number;
  L: number;
  V: number;
  Cvae: number;
  patch_nums: number[];
}
export const tinyMeta: TinyMeta = JSON.parse(fs.readFileSync(fixture('var_tiny_meta.json'), 'utf8'));

/** The trained model, from trained/README.md: "depth 4, width 128, 4 heads, FFN hidden 512 (GELU tanh)", vocabulary 512, Cvae 32. */
export const TRAINED_ARCH = { depth: 4, C: 128, heads: 4, H: 512, V: 512, Cvae: 32 } as const;
/** VAR's patch layout (README: patch_nums 1,2,3,4,5,6,8,10,13,16, L = 680). */
export const VAR_PATCH_NUMS_README = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];
export const VAR_L_README = 680;

export interface FixtureExpectation {
  file: string;
  depth: number;
  D: number;
  H: number;
  V: number;
  Cvae: number;
  activation: 'gelu_tanh' | 'relu';
  kind: 'full' | 'step';
  /** 1-based scale of a static step graph; null for full and dynamic step graphs. */
  stepScale: number | null;
  /** 2 for step graphs (CFG doubles the batch inside), 1 for full graphs. */
  rowsPerSample: number;
  /** The *_io folder with a test vector, when there is one. */
  io?: string;
}

/** Every VAR model in ../shared/fixtures with what its README says about it. */
export function varFixtures(): FixtureExpectation[] {
  const m = tinyMeta;
  // README: "FFN hidden H 256" for C 64, i.e. mlp_ratio 4.
  const tiny = { depth: m.depth, D: m.C, H: 4 * m.C, V: m.V, Cvae: m.Cvae, activation: 'gelu_tanh' as const };
  const t = TRAINED_ARCH;
  const trained = { depth: t.depth, D: t.C, H: t.H, V: t.V, Cvae: t.Cvae };
  const list: FixtureExpectation[] = [
    { file: fixture('var_tiny_full.onnx'), ...tiny, kind: 'full', stepScale: null, rowsPerSample: 1, io: fixture('var_tiny_full_io') },
    { file: fixture('var_tiny_full_static_b1.onnx'), ...tiny, kind: 'full', stepScale: null, rowsPerSample: 1 },
    { file: fixture('var_tiny_step0.onnx'), ...tiny, kind: 'step', stepScale: 1, rowsPerSample: 2, io: fixture('var_tiny_step0_io') },
    { file: fixture('var_tiny_step.onnx'), ...tiny, kind: 'step', stepScale: null, rowsPerSample: 2, io: fixture('var_tiny_step_io') },
    { file: fixture('var_tiny_step_last_static.onnx'), ...tiny, kind: 'step', stepScale: 10, rowsPerSample: 2, io: fixture('var_tiny_step_last_static_io') },
    // trained/README.md's table: GELU model, then two GELU → ReLU fine-tunes.
    { file: path.join(TRAINED, 'var_gelu_tf.onnx'), ...trained, activation: 'gelu_tanh', kind: 'full', stepScale: null, rowsPerSample: 1 },
    { file: path.join(TRAINED, 'var_relu_h001_tf.onnx'), ...trained, activation: 'relu', kind: 'full', stepScale: null, rowsPerSample: 1 },
    { file: path.join(TRAINED, 'var_relu_h01_tf.onnx'), ...trained, activation: 'relu', kind: 'full', stepScale: null, rowsPerSample: 1 },
  ];
  // gelu_steps/var_step_s{s}.onnx: "one graph per scale s = 0…9" (0-based), so the 1-based scale is s + 1.
  for (let s = 0; s <= 9; s++) {
    list.push({ file: path.join(GELU_STEPS, `var_step_s${s}.onnx`), ...trained, activation: 'gelu_tanh', kind: 'step', stepScale: s + 1, rowsPerSample: 2 });
  }
  return list;
}

/** The graphs of gelu_steps that are not VAR transformers (README: next-scale VQ step and the VQVAE decoder). */
export function nonVarFixtures(): string[] {
  const out: string[] = [];
  for (let s = 0; s <= 9; s++) out.push(path.join(GELU_STEPS, `vq_nextscale_s${s}.onnx`));
  out.push(path.join(GELU_STEPS, 'vqvae_decoder.onnx'));
  return out;
}

/** All .onnx files under the fixtures folder (to check nothing is left out of the lists above). */
export function allOnnxFiles(dir = FIXTURES): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...allOnnxFiles(p));
    else if (e.name.endsWith('.onnx')) out.push(p);
  }
  return out.sort();
}

export interface IoTensor {
  dtype: 'float32' | 'int64';
  shape: number[];
  data: Float32Array | BigInt64Array;
}

/** Reads a fixture *_io folder (manifest.json: name → { file, dtype, shape }, raw little-endian .bin files). */
export function readIo(dir: string): Record<string, IoTensor> {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Record<string, { file: string; dtype: string; shape: number[] }>;
  const out: Record<string, IoTensor> = {};
  for (const [name, e] of Object.entries(manifest)) {
    const b = fs.readFileSync(path.join(dir, e.file));
    const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
    if (e.dtype === 'float32') out[name] = { dtype: 'float32', shape: e.shape, data: new Float32Array(ab) };
    else if (e.dtype === 'int64') out[name] = { dtype: 'int64', shape: e.shape, data: new BigInt64Array(ab) };
    else throw new Error(`${dir}: unexpected dtype ${e.dtype} for ${name}`);
  }
  return out;
}

export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `moefy-${tag}-`));
}

export function rmDir(d: string): void {
  fs.rmSync(d, { recursive: true, force: true });
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/moefy.js ...args` from the repository root. */
export function runCli(args: string[], opts: { timeoutMs?: number } = {}): CliResult {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'bin', 'moefy.js'), ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 60_000,
    maxBuffer: 256 << 20,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Σ pn² and the per-scale token counts and cumulative kv lengths of a patch layout. */
export function layoutOf(patchNums: number[]): { tokens: number[]; kv: number[]; L: number } {
  const tokens = patchNums.map((p) => p * p);
  const kv: number[] = [];
  let acc = 0;
  for (const t of tokens) {
    acc += t;
    kv.push(acc);
  }
  return { tokens, kv, L: acc };
}
