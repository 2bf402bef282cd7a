// The CPU kernel with T = float16 (X, norms, W1, B1, W2, B2, Y in float16; threshold float32; active int32),
// computed in float32, against the TypeScript reference run in float32 on the same (float16-valued) data, at every
// CPU level: constant weights (packed at the AVX levels), weights fed as inputs (converted per call), the dense path.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tensor } from 'onnxruntime-common';
import { createSession, dynamicMoeReference } from '../src/runtime';
import type { Activation } from '../src/runtime';
import { buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';
import { cpuLevels } from './helpers/cpu';
import { fromHalfBits, toHalfBits } from './helpers/half';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { repoRoot } from './helpers/fixtures';

interface Case {
  name: string;
  B: number;
  L: number;
  D: number;
  E: number;
  S: number;
  act: Activation;
  patchNums: number[];
  threshold: number[];
  thresholdInput?: number[];
  scaleIndex?: number;
  weightsAsInputs?: boolean;
}

const CASES: Case[] = [
  { name: 'full sequence, relu, B2', B: 2, L: 14, D: 40, E: 4, S: 12, act: 'relu', patchNums: [1, 2, 3], threshold: [0, 0.5, 0.8] },
  { name: 'step, gelu_tanh, threshold input, ragged panels', B: 2, L: 100, D: 70, E: 3, S: 45, act: 'gelu_tanh', patchNums: [1, 3, 10], threshold: [0, 0, 0], thresholdInput: [0.2, 0.4, 0.3] },
  { name: 'scale_index, gelu, weights as inputs', B: 1, L: 9, D: 24, E: 5, S: 8, act: 'gelu', patchNums: [1, 2, 3], threshold: [0.3, 0.3, 0.6], scaleIndex: 1, weightsAsInputs: true },
  { name: 'every expert (dense path), weights as inputs', B: 2, L: 30, D: 32, E: 4, S: 9, act: 'relu', patchNums: [1, 2, 5], threshold: [0, 0, 0], weightsAsInputs: true },
  { name: 'many tokens per expert', B: 2, L: 180, D: 32, E: 4, S: 24, act: 'relu', patchNums: [4, 8, 10], threshold: [0.2, 0.5, 0.35] },
];

async function runCase(c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const { B, L, D, E, S } = c;
  const h = (n: number, scale: number) => toHalfBits(randomArray(r, n, scale));
  const W1 = h(D * E * S, 1 / Math.sqrt(D)), B1 = h(E * S, 0.1), W2 = h(E * S * D, 1 / Math.sqrt(E * S)), B2 = h(D, 0.1);
  const X = h(B * L * D, 1);
  const Nm = toHalfBits(Array.from(randomArray(r, B * L * E), Math.abs));
  const model = buildDynamicMoeModel({
    D, E, S, activation: c.act, patchNums: c.patchNums, threshold: c.threshold, dtype: 'float16',
    weights: c.weightsAsInputs ? undefined : { W1, B1, W2, B2 }, withB2: true,
    withScaleIndex: c.scaleIndex !== undefined, withThresholdInput: c.thresholdInput !== undefined, withActive: true,
  });
  const sess = await createSession(model, { intraOpNumThreads: 2 });
  const f16 = (d: Uint16Array, dims: number[]) => new Tensor('float16', d, dims);
  const feeds: Record<string, Tensor> = { X: f16(X, [B, L, D]), norms: f16(Nm, [B, L, E]) };
  if (c.weightsAsInputs) Object.assign(feeds, { W1: f16(W1, [D, E * S]), B1: f16(B1, [E * S]), W2: f16(W2, [E * S, D]), B2: f16(B2, [D]) });
  if (c.scaleIndex !== undefined) feeds.scale_index = new Tensor('int64', BigInt64Array.from([BigInt(c.scaleIndex)]), []);
  if (c.thresholdInput) feeds.threshold = new Tensor('float32', Float32Array.from(c.thresholdInput), [c.thresholdInput.length]);
  const out = await sess.run(feeds);
  sess.release();
  assert.equal(out.Y.type, 'float16');
  const f32 = (d: Uint16Array, dims: number[]) => new Tensor('float32', fromHalfBits(d), dims);
  const ref = dynamicMoeReference(
    {
      X: f32(X, [B, L, D]), norms: f32(Nm, [B, L, E]), W1: f32(W1, [D, E * S]), B1: f32(B1, [E * S]), W2: f32(W2, [E * S, D]), B2: f32(B2, [D]),
      scaleIndex: c.scaleIndex, threshold: c.thresholdInput,
    },
    { numExperts: E, activation: c.act, patchNums: c.patchNums, threshold: c.threshold },
  );
  assert.deepEqual(Array.from(out.active.data as Int32Array), Array.from(ref.active.data as Int32Array), `${c.name}: active`);
  const y = fromHalfBits(out.Y.data as Uint16Array);
  const want = ref.Y.data as Float32Array;
  let num = 0, den = 0, worst = 0;
  for (let i = 0; i < y.length; i++) {
    num += (y[i] - want[i]) ** 2;
    den += want[i] ** 2;
    // float16 keeps 11 significant bits: the float32 result rounded once is within 2^-11 relative (+ subnormals)
    worst = Math.max(worst, Math.abs(y[i] - want[i]) / (Math.abs(want[i]) * 2 ** -10 + 2 ** -20));
  }
  assert.ok(Math.sqrt(num / den) < 1e-3, `${c.name}: relative error ${Math.sqrt(num / den)}`);
  assert.ok(worst <= 1, `${c.name}: an element is off by more than 2^-10 relative (${worst})`);
}

for (const level of cpuLevels()) {
  CASES.forEach((c, i) => {
    test(`float16 kernel vs reference [${level}]: ${c.name}`, async () => {
      process.env.MOEFY_CPU_LEVEL = level;
      try {
        for (const seed of [1, 2]) await runCase(c, 500 + 10 * i + seed);
      } finally {
        delete process.env.MOEFY_CPU_LEVEL;
      }
    });
  });
}

test('float16 kernel: a float32 weight beside float16 X is refused with one line', async () => {
  const model = buildDynamicMoeModel({ D: 8, E: 2, S: 4, patchNums: [1, 2], threshold: [0, 0], dtype: 'float16' });
  const s = await createSession(model, { intraOpNumThreads: 1 });
  const z = (n: number) => new Uint16Array(n);
  await assert.rejects(
    s.run({
      X: new Tensor('float16', z(8), [1, 1, 8]), norms: new Tensor('float16', z(2), [1, 1, 2]),
      W1: new Tensor('float32', new Float32Array(64), [8, 8]), B1: new Tensor('float16', z(8), [8]), W2: new Tensor('float16', z(64), [8, 8]),
    }),
    /W1|type|float/,
  );
  s.release();
});

// With MOEFY_LOW_MEMORY=1 a float16 model's constant weights are packed as float16 panels and converted exactly in
// the micro-kernel: its output is the float32 model's (the same float16-valued weights and inputs in float32) rounded
// to float16, bit for bit, as it is with the default float32 panels.
test('float16 panels (MOEFY_LOW_MEMORY=1) and float32 ones: the float32 model\'s output rounded to float16, at every level', async () => {
  const r = rng(77);
  const B = 2, L = 100, D = 70, E = 3, S = 45;
  const h = (n: number, scale: number) => toHalfBits(randomArray(r, n, scale));
  const w16 = { W1: h(D * E * S, 1 / Math.sqrt(D)), B1: h(E * S, 0.1), W2: h(E * S * D, 1 / Math.sqrt(E * S)), B2: h(D, 0.1) };
  const w32 = { W1: fromHalfBits(w16.W1), B1: fromHalfBits(w16.B1), W2: fromHalfBits(w16.W2), B2: fromHalfBits(w16.B2) };
  const X = h(B * L * D, 1), Nm = toHalfBits(Array.from(randomArray(r, B * L * E), Math.abs));
  const spec = { D, E, S, activation: 'gelu_tanh' as const, patchNums: [1, 3, 10], threshold: [0, 0.3, 0.45], withB2: true };
  for (const [level, low] of cpuLevels().flatMap((l) => [[l, '1'], [l, '0']])) {
    process.env.MOEFY_CPU_LEVEL = level;
    try {
      process.env.MOEFY_LOW_MEMORY = low;
      const s16 = await createSession(buildDynamicMoeModel({ ...spec, dtype: 'float16', weights: w16 }), { intraOpNumThreads: 2 });
      delete process.env.MOEFY_LOW_MEMORY;
      const s32 = await createSession(buildDynamicMoeModel({ ...spec, weights: w32 }), { intraOpNumThreads: 2 });
      const y16 = (await s16.run({ X: new Tensor('float16', X, [B, L, D]), norms: new Tensor('float16', Nm, [B, L, E]) })).Y.data as Uint16Array;
      const y32 = (await s32.run({ X: new Tensor('float32', fromHalfBits(X), [B, L, D]), norms: new Tensor('float32', fromHalfBits(Nm), [B, L, E]) })).Y.data as Float32Array;
      s16.release();
      s32.release();
      const rounded = toHalfBits(y32);
      let diff = 0;
      for (let i = 0; i < rounded.length; i++) if (rounded[i] !== y16[i]) diff++;
      assert.equal(diff, 0, `${level}, MOEFY_LOW_MEMORY=${low}: ${diff} of ${rounded.length} values differ from the float32 model's rounded output`);
    } finally {
      delete process.env.MOEFY_CPU_LEVEL;
      delete process.env.MOEFY_LOW_MEMORY;
    }
  }
});

test('MOEFY_LOW_MEMORY=1 packs float16 constant weights as float16 panels at the AVX levels (kernel trace); by default, and for float32 weights, float32 panels', () => {
  const script = (dtype: string) => `
    const { createSession } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'runtime'))});
    const { buildDynamicMoeModel, randomArray, rng } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'test', 'helpers', 'test-models'))});
    const { toHalfBits } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'test', 'helpers', 'half'))});
    const r = rng(3), w = (n) => '${dtype}' === 'float16' ? toHalfBits(randomArray(r, n)) : randomArray(r, n);
    createSession(buildDynamicMoeModel({ D: 8, E: 2, S: 4, patchNums: [1, 2], dtype: '${dtype}', weights: { W1: w(64), B1: w(8), W2: w(64) } }))
      .then(() => console.log('created'), (e) => console.log('error: ' + e.message));`;
  for (const level of cpuLevels()) {
    for (const [dtype, low] of [['float16', '1'], ['float16', '0'], ['float32', '1']]) {
      const r = spawnSync(process.execPath, ['-e', script(dtype)], { encoding: 'utf8', env: { ...process.env, MOEFY_CPU_LEVEL: level, MOEFY_KERNEL_TRACE: '1', MOEFY_LOW_MEMORY: low } });
      assert.match(r.stdout, /created/, r.stdout + r.stderr);
      const half = level !== 'plain' && dtype === 'float16' && low === '1';
      assert.match(r.stderr, level === 'plain' ? /read per call/ : /pre-packed/, `${level} ${dtype} ${low}: ${r.stderr}`);
      (half ? assert.match : assert.doesNotMatch)(r.stderr, /float16 panels/, `${level} ${dtype} MOEFY_LOW_MEMORY=${low}: ${r.stderr}`);
    }
  }
});
