// The CUDA DynamicMoE kernels, run on a CPU emulator of the CUDA subset they use (kernels/cuda/emu/cuda_emu.h):
// routing, scans, scatter, tile lists, both grouped GEMMs (fp32 FMA tiles and fp16 WMMA tiles), scalar and vector
// loaders and epilogues, against the host reference, under three thread schedules; and every routing rule with
// skip_bias against the TypeScript reference. Needs only g++; the real-GPU check is `bash kernels/cuda/gpu-check.sh`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { dynamicMoeReference } from '../src/runtime';
import type { Activation } from '../src/runtime';
import { ROUTING_RULES, RoutingRule } from '../src/op';
import { randomArray, rng } from './helpers/test-models';
import { fromHalfBits, toHalfBits } from './helpers/half';

const root = resolve(__dirname, '..', '..'); // dist/test -> repository root
const cudaDir = join(root, 'kernels', 'cuda');

function haveGxx(): boolean {
  const r = spawnSync('g++', ['--version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}

function build(dir: string, name: string, defines: string[]): string {
  const exe = join(dir, name);
  const b = spawnSync(
    'g++',
    [
      '-std=c++17', '-O2', '-w', '-DMOEFY_CUDA_EMULATE', ...defines,
      '-I', cudaDir,
      '-x', 'c++', join(cudaDir, 'dynamic_moe_cuda.cu'),
      '-x', 'none', join(cudaDir, 'emu', 'emu_check.cc'),
      '-o', exe,
    ],
    { encoding: 'utf8', timeout: 240_000 },
  );
  assert.equal(b.status, 0, `g++ failed:\n${b.stdout}\n${b.stderr}`);
  return exe;
}

function buildAndRun(dir: string, name: string, defines: string[], args: string[]): string {
  const exe = build(dir, name, defines);
  const r = spawnSync(exe, args, { encoding: 'utf8', timeout: 240_000 });
  assert.equal(r.status, 0, `${name} failed (status ${r.status}, signal ${r.signal}):\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /\d+ passed, 0 failed/);
  return r.stdout;
}

/** Runs fn in a fresh temporary folder, removed afterwards; skips the test without g++. */
function withGxx(t: { skip(msg: string): void }, fn: (dir: string) => void): void {
  if (!haveGxx()) {
    t.skip('g++ not found');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'moefy-cuda-emu-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('CUDA DynamicMoE kernels match the reference on the CPU emulator (3 schedules, fp32 and fp16)', { timeout: 300_000 }, (t) => {
  withGxx(t, (dir) => buildAndRun(dir, 'emu_check', [], []));
});

test('CUDA DynamicMoE sm_90 float4-atomic epilogue matches the reference on the CPU emulator', { timeout: 300_000 }, (t) => {
  withGxx(t, (dir) => buildAndRun(dir, 'emu_check_v4', ['-DMOEFY_EMU_VECTOR_ATOMICS'], ['--quick']));
});

interface EmuCall {
  half: boolean;
  fc2: 'atomic' | 'window';
  act: Activation;
  routing: RoutingRule;
  B: number;
  L: number;
  D: number;
  E: number;
  S: number;
  patchNums: number[];
  threshold: number[];
  X: Float32Array;
  norms: Float32Array;
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  B2: Float32Array;
  skip?: Float32Array;
}

/** Runs one call on the emulated CUDA kernels (emu_check --case, the format of its run_file). */
function runEmulated(exe: string, dir: string, c: EmuCall): { Y: Float32Array; active: Int32Array } {
  const ints = [c.half ? 1 : 0, c.fc2 === 'atomic' ? 1 : 2, ['relu', 'gelu_tanh', 'gelu'].indexOf(c.act), ROUTING_RULES.indexOf(c.routing),
    c.B, c.L, c.D, c.E, c.S, 1, c.skip ? 1 : 0, -1, c.patchNums.length, ...c.patchNums, c.threshold.length];
  const parts: Buffer[] = [Buffer.from(BigInt64Array.from(ints.map(BigInt)).buffer)];
  for (const a of [Float32Array.from(c.threshold), c.X, c.norms, c.W1, c.B1, c.W2, c.B2, ...(c.skip ? [c.skip] : [])]) parts.push(Buffer.from(a.buffer, a.byteOffset, a.byteLength));
  const inFile = join(dir, 'call.bin'), outFile = join(dir, 'out.bin');
  writeFileSync(inFile, Buffer.concat(parts));
  const r = spawnSync(exe, ['--case', inFile, outFile], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `emu_check --case: status ${r.status} ${r.signal ?? ''} ${r.stderr}`);
  const out = readFileSync(outFile);
  const T = c.B * c.L;
  const rc = out.readInt32LE(4 * (T * c.D + T));
  assert.equal(rc, 0, `the emulated kernel failed: ${r.stderr}`);
  return { Y: new Float32Array(out.buffer.slice(out.byteOffset, out.byteOffset + 4 * T * c.D)), active: new Int32Array(out.buffer.slice(out.byteOffset + 4 * T * c.D, out.byteOffset + 4 * (T * c.D + T))) };
}

// The rules of src/op (docs/dynamic-moe.md) in the CUDA route kernel, and skip_bias in both FC2 strategies, against the
// TypeScript reference: active counts exactly; Y within 1e-5 (float32) or 2e-3 (float16: the CUDA kernel rounds the
// hidden layer to float16, as a dense float16 FFN does; the reference does not).
test('CUDA DynamicMoE kernels on the CPU emulator: every routing rule and skip_bias like the TypeScript reference', { timeout: 300_000 }, (t) => {
  withGxx(t, (dir) => {
    const exe = build(dir, 'emu_check', []);
    // per rule: thresholds without skip_bias, then thresholds (NaN, negative) with it
    const thresholds: Record<RoutingRule, [number[], boolean][]> = {
      relative: [[[0.3, 0.6, 1.5], false], [[NaN, -1, 0.8], true]],
      absolute: [[[0.2, 0.5, 3], false], [[NaN, -0.5, 0.7], true]],
      topk: [[[0.25, 0.5, 1], false], [[NaN, -1, 0.875], true]],
    };
    let seed = 1;
    // vector loaders and the token-window FC2 (sizes multiples of 8), and the scalar paths (odd sizes)
    for (const [D, E, S] of [[32, 8, 16], [20, 5, 6]]) {
      for (const routing of ROUTING_RULES) {
        for (const [threshold, withSkip] of thresholds[routing]) {
          for (const [half, fc2] of [[false, 'atomic'], [true, 'window'], [true, 'atomic']] as const) {
            {
              const r = rng(seed++);
              const B = 2, L = 14, patchNums = [1, 2, 3], act: Activation = 'gelu_tanh';
              const q = (a: Float32Array) => (half ? fromHalfBits(toHalfBits(a)) : a);
              const norms = q(Float32Array.from(randomArray(r, B * L * E), (v) => (routing === 'topk' ? Math.round(Math.abs(v) * 4) / 4 : Math.abs(v))));
              const c: EmuCall = {
                half, fc2, act, routing, B, L, D, E, S, patchNums, threshold, norms,
                X: q(randomArray(r, B * L * D)), W1: q(randomArray(r, D * E * S, 1 / Math.sqrt(D))), B1: q(randomArray(r, E * S, 0.1)),
                W2: q(randomArray(r, E * S * D, 1 / Math.sqrt(E * S))), B2: q(randomArray(r, D, 0.1)), skip: withSkip ? q(randomArray(r, E * D, 0.3)) : undefined,
              };
              const got = runEmulated(exe, dir, c);
              const ten = (a: Float32Array, d: number[]) => new Tensor('float32', a, d);
              const ref = dynamicMoeReference(
                { X: ten(c.X, [B, L, D]), norms: ten(norms, [B, L, E]), W1: ten(c.W1, [D, E * S]), B1: ten(c.B1, [E * S]), W2: ten(c.W2, [E * S, D]), B2: ten(c.B2, [D]), threshold, skipBias: c.skip && ten(c.skip, [E, D]) },
                { numExperts: E, activation: act, patchNums, routing },
              );
              const what = `${half ? 'float16' : 'float32'} ${fc2} D=${D} ${routing} ${threshold} skip_bias ${withSkip}`;
              assert.deepEqual(Array.from(got.active), Array.from(ref.active.data as Int32Array), `${what}: active`);
              const want = ref.Y.data as Float32Array;
              let num = 0, den = 0;
              for (let i = 0; i < want.length; i++) {
                num += (got.Y[i] - want[i]) ** 2;
                den += want[i] ** 2;
              }
              const err = Math.sqrt(num / den);
              assert.ok(err <= (half ? 2e-3 : 1e-5), `${what}: relative error ${err}`);
            }
          }
        }
      }
    }
  });
});
