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
