// The CPU DynamicMoE kernel (libmoefy_ops.so through the moefy runtime) against the TypeScript reference.
import { test } from 'node:test';
import assert from 'node:assert';
import { Tensor } from 'onnxruntime-common';
import { createSession, dynamicMoeReference, MoefySession } from '../src/runtime';
import type { Activation } from '../src/runtime';
import { buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';
import { MoefyError } from '../src/errors';
import { cpuLevels } from './helpers/cpu';

interface Case {
  name: string;
  B: number;
  L: number;
  D: number;
  E: number;
  S: number;
  act: Activation;
  patchNums: number[];
  thresholdAttr?: number[];
  thresholdInput?: number[];
  scaleIndex?: number;
  withB2?: boolean;
  normsKind?: 'random' | 'zero' | 'ties';
  threads?: number;
  /** weights as graph inputs (the OpenBLAS path) instead of constant initializers (the pre-packed path) */
  weightsAsInputs?: boolean;
}

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

async function runCase(c: Case, seed: number): Promise<void> {
  const r = rng(seed);
  const { B, L, D, E, S } = c;
  const W1 = randomArray(r, D * E * S, 1 / Math.sqrt(D));
  const B1 = randomArray(r, E * S, 0.1);
  const W2 = randomArray(r, E * S * D, 1 / Math.sqrt(E * S));
  const B2 = c.withB2 ? randomArray(r, D, 0.1) : undefined;
  const X = new Tensor('float32', randomArray(r, B * L * D), [B, L, D]);
  let nd: Float32Array;
  if (c.normsKind === 'zero') nd = new Float32Array(B * L * E);
  else if (c.normsKind === 'ties') nd = Float32Array.from(randomArray(r, B * L * E), (v) => Math.round(Math.abs(v) * 3) / 3);
  else nd = Float32Array.from(randomArray(r, B * L * E), Math.abs);
  const norms = new Tensor('float32', nd, [B, L, E]);
  const model = buildDynamicMoeModel({
    D, E, S, activation: c.act, patchNums: c.patchNums, threshold: c.thresholdAttr,
    weights: c.weightsAsInputs ? undefined : { W1, B1, W2, B2 },
    withB2: !!B2,
    withScaleIndex: c.scaleIndex !== undefined,
    withThresholdInput: c.thresholdInput !== undefined,
    withActive: true,
  });
  const sess = await createSession(model, { intraOpNumThreads: c.threads ?? 2 });
  const feeds: Record<string, Tensor> = { X, norms };
  if (c.weightsAsInputs) {
    feeds.W1 = new Tensor('float32', W1, [D, E * S]);
    feeds.B1 = new Tensor('float32', B1, [E * S]);
    feeds.W2 = new Tensor('float32', W2, [E * S, D]);
    if (B2) feeds.B2 = new Tensor('float32', B2, [D]);
  }
  if (c.scaleIndex !== undefined) feeds.scale_index = new Tensor('int64', BigInt64Array.from([BigInt(c.scaleIndex)]), []);
  if (c.thresholdInput) feeds.threshold = new Tensor('float32', Float32Array.from(c.thresholdInput), [c.thresholdInput.length]);
  const out = await sess.run(feeds);
  sess.release();
  const ref = dynamicMoeReference(
    {
      X, norms,
      W1: new Tensor('float32', W1, [D, E * S]), B1: new Tensor('float32', B1, [E * S]),
      W2: new Tensor('float32', W2, [E * S, D]), B2: B2 ? new Tensor('float32', B2, [D]) : undefined,
      scaleIndex: c.scaleIndex, threshold: c.thresholdInput,
    },
    { numExperts: E, activation: c.act, patchNums: c.patchNums, threshold: c.thresholdAttr },
  );
  assert.deepStrictEqual([...out.Y.dims], [B, L, D]);
  assert.deepStrictEqual(Array.from(out.active.data as Int32Array), Array.from(ref.active.data as Int32Array), `${c.name}: active`);
  const err = relErr(out.Y.data as Float32Array, ref.Y.data as Float32Array);
  assert.ok(err <= 1e-5, `${c.name}: relative error ${err}`);
}

const CASES: Case[] = [
  { name: 'full sequence, B=2, relu, thresholds 0/0.5/1', B: 2, L: 14, D: 16, E: 4, S: 5, act: 'relu', patchNums: [1, 2, 3], thresholdAttr: [0, 0.5, 1], withB2: true },
  { name: 'step layout, gelu_tanh, threshold input', B: 3, L: 9, D: 24, E: 6, S: 7, act: 'gelu_tanh', patchNums: [1, 2, 3, 4], thresholdAttr: [0, 0, 0, 0], thresholdInput: [0.9, 0.1, 0.6, 0.3] },
  { name: 'scale_index overrides layout, gelu', B: 2, L: 7, D: 20, E: 5, S: 3, act: 'gelu', patchNums: [1, 2, 3], thresholdAttr: [0.1, 0.4, 0.7], scaleIndex: 2, withB2: true },
  { name: 'E = 1', B: 2, L: 5, D: 12, E: 1, S: 13, act: 'relu', patchNums: [1, 2], thresholdAttr: [1, 1] },
  { name: 'all thresholds 0 (dense path)', B: 2, L: 30, D: 32, E: 4, S: 9, act: 'gelu_tanh', patchNums: [1, 2, 5], thresholdAttr: [0, 0, 0], withB2: true },
  { name: 'threshold above 1: argmax only', B: 1, L: 14, D: 16, E: 8, S: 4, act: 'relu', patchNums: [1, 2, 3], thresholdAttr: [1.5, 2, 1.01] },
  { name: 'many tokens per expert (chunked tasks, several slots)', B: 2, L: 180, D: 32, E: 4, S: 24, act: 'relu', patchNums: [4, 8, 10], thresholdAttr: [0.2, 0.5, 0.35], withB2: true },
  { name: 'zero norms run every expert', B: 2, L: 4, D: 8, E: 3, S: 17, act: 'relu', patchNums: [1, 2], thresholdAttr: [0.5, 0.5], normsKind: 'zero' },
  { name: 'ties at the threshold', B: 2, L: 14, D: 8, E: 5, S: 3, act: 'gelu', patchNums: [1, 2, 3], thresholdAttr: [1, 0.5, 0.6666667], normsKind: 'ties' },
  { name: 'weights as inputs (BLAS path), full sequence', B: 2, L: 14, D: 16, E: 4, S: 5, act: 'gelu_tanh', patchNums: [1, 2, 3], thresholdAttr: [0, 0.5, 1], withB2: true, weightsAsInputs: true },
  { name: 'weights as inputs (BLAS path), many tokens', B: 2, L: 180, D: 40, E: 4, S: 24, act: 'relu', patchNums: [4, 8, 10], thresholdAttr: [0.2, 0.5, 0.35], weightsAsInputs: true },
  { name: 'weights as inputs (BLAS path), dense', B: 2, L: 30, D: 24, E: 3, S: 10, act: 'gelu', patchNums: [1, 2, 5], thresholdAttr: [0, 0, 0], withB2: true, weightsAsInputs: true },
  { name: 'wide layer, D and S past one panel with ragged edges', B: 1, L: 100, D: 70, E: 3, S: 45, act: 'gelu_tanh', patchNums: [1, 3, 10], thresholdAttr: [0.3, 0.3, 0.3], withB2: true },
  { name: 'D past the K block (D = 600)', B: 1, L: 9, D: 600, E: 2, S: 40, act: 'relu', patchNums: [1, 3], thresholdAttr: [0.5, 0.8], withB2: true },
  { name: 'single thread', B: 2, L: 14, D: 16, E: 4, S: 6, act: 'gelu_tanh', patchNums: [1, 2, 3], thresholdAttr: [0.3, 0.3, 0.3], threads: 1 },
];

// Every CPU level this machine has (MOEFY_CPU_LEVEL forces one; read at kernel creation): AVX-512 and AVX2+FMA
// packed micro-kernels, the plain OpenBLAS path.
const LEVELS = cpuLevels();
for (const level of LEVELS) {
  CASES.forEach((c, i) => {
    test(`kernel vs reference [${level}]: ${c.name}`, async () => {
      process.env.MOEFY_CPU_LEVEL = level;
      try {
        for (const seed of [1, 2]) await runCase(c, 1000 * i + seed);
      } finally {
        delete process.env.MOEFY_CPU_LEVEL;
      }
    });
  });
}

async function errorSession(extra: { withThresholdInput?: boolean; withScaleIndex?: boolean; patchNums?: number[] } = {}): Promise<MoefySession> {
  return createSession(
    buildDynamicMoeModel({ D: 8, E: 4, S: 3, patchNums: extra.patchNums ?? [1, 2, 3], threshold: [0.5, 0.5, 0.5], withB2: true, ...extra }),
    { intraOpNumThreads: 2 },
  );
}

function f32(dims: number[], fill = 0.5): Tensor {
  const n = dims.reduce((a, b) => a * b, 1);
  return new Tensor('float32', new Float32Array(n).fill(fill), dims);
}

test('kernel: mismatched shapes reject, the session keeps working', async () => {
  const s = await errorSession();
  const good = { X: f32([1, 14, 8]), norms: f32([1, 14, 4]), W1: f32([8, 12]), B1: f32([12]), W2: f32([12, 8]), B2: f32([8]) };
  const bad: [string, Record<string, Tensor>, RegExp][] = [
    ['norms E', { ...good, norms: f32([1, 14, 5]) }, /norms/],
    ['W1 columns', { ...good, W1: f32([8, 13]), B1: f32([13]) }, /W1/],
    ['W2 shape', { ...good, W2: f32([8, 12]) }, /W2/],
    ['B1 shape', { ...good, B1: f32([11]) }, /B1/],
    ['B2 shape', { ...good, B2: f32([9]) }, /B2/],
    ['L not a layout', { ...good, X: f32([1, 6, 8]), norms: f32([1, 6, 4]) }, /L = 6/],
    ['X rank', { ...good, X: f32([14, 8]), norms: f32([1, 14, 4]) }, /X/],
  ];
  for (const [name, feeds, re] of bad) {
    await assert.rejects(s.run(feeds), (e: Error) => e instanceof MoefyError && re.test(e.message), name);
  }
  const out = await s.run(good);
  assert.deepStrictEqual([...out.Y.dims], [1, 14, 8]);
  s.release();
});

test('kernel: bad threshold / scale_index inputs reject', async () => {
  const s = await errorSession({ withThresholdInput: true, withScaleIndex: true });
  const base = { X: f32([1, 6, 8]), norms: f32([1, 6, 4]), W1: f32([8, 12]), B1: f32([12]), W2: f32([12, 8]), B2: f32([8]) };
  const si = (v: number) => new Tensor('int64', BigInt64Array.from([BigInt(v)]), []);
  const th = (n: number) => f32([n], 0.5);
  await assert.rejects(s.run({ ...base, scale_index: si(3), threshold: th(3) }), /scale_index 3 out of range/);
  await assert.rejects(s.run({ ...base, scale_index: si(1), threshold: th(2) }), /threshold/);
  const ok = await s.run({ ...base, scale_index: si(1), threshold: th(3) });
  assert.deepStrictEqual([...ok.Y.dims], [1, 6, 8]);
  s.release();
});

test('kernel: empty batch gives empty output', async () => {
  const s = await errorSession();
  const out = await s.run({ X: f32([0, 14, 8]), norms: f32([0, 14, 4]), W1: f32([8, 12]), B1: f32([12]), W2: f32([12, 8]), B2: f32([8]) });
  assert.deepStrictEqual([...out.Y.dims], [0, 14, 8]);
  s.release();
});
