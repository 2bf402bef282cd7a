// Contract version 2 of DynamicMoE (docs/dynamic-moe.md): the routing rules (relative, absolute, topk), thresholds
// above 1, negative or NaN, and skip_bias, in every implementation on the same feeds: the rule in src/op against a
// brute-force statement of it, the CPU kernel (every level, float32 and float16, pre-packed, OpenBLAS and dense paths)
// and the function body (stock ONNX Runtime) against the TypeScript reference; models made before the change
// (fixtures/dynamic-moe-v1*.onnx) run as before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { createSession, dynamicMoeReference } from '../src/runtime';
import type { Activation } from '../src/runtime';
import { gridRunLimits, routeToken, ROUTING_RULES, RoutingRule, topkCount } from '../src/op';
import { buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';
import { cpuLevels } from './helpers/cpu';
import { fromHalfBits, toHalfBits } from './helpers/half';
import { repoRoot } from './helpers/fixtures';
import { MoefyError } from '../src/errors';

/** The rules as docs/dynamic-moe.md states them, written plainly (sorting, counting) for one token. */
function bruteForce(norms: number[], rule: RoutingRule, t: number): boolean[] {
  const E = norms.length;
  const tf = Math.fround(t);
  if (Number.isNaN(tf) || tf <= 0) return norms.map(() => true);
  let argmax = 0;
  norms.forEach((v, e) => {
    if (v > norms[argmax]) argmax = e;
  });
  let cut: number;
  if (rule === 'relative') cut = Math.fround(tf * norms[argmax]);
  else if (rule === 'absolute') cut = tf;
  else {
    const k = Math.min(E, Math.max(1, E - Math.floor(Math.fround(tf * E))));
    cut = [...norms].sort((a, b) => b - a)[k - 1];
  }
  return norms.map((v, e) => e === argmax || v >= cut);
}

const THRESHOLDS = [0, 0.1, 0.25, 0.5, 0.6666667, 0.75, 0.99, 1, 1.5, 7, -0.5, NaN, Infinity, 1e-30];

test('routing rules in src/op: every rule at every threshold as the contract states it, ties included', () => {
  const r = rng(3);
  for (const E of [1, 2, 5, 8, 32]) {
    for (let n = 0; n < 40; n++) {
      // ties: values on a coarse grid; every 5th token all equal
      const norms = Array.from({ length: E }, () => (n % 5 === 4 ? 0.5 : n % 2 ? Math.round(r() * 4) / 4 : Math.fround(r())));
      for (const rule of ROUTING_RULES) {
        for (const t of THRESHOLDS) {
          const mask = new Uint8Array(E);
          const count = routeToken(Float32Array.from(norms), 0, E, rule, t, mask);
          const want = bruteForce(norms, rule, t);
          assert.deepEqual(Array.from(mask, (m) => m === 1), want, `${rule} t=${t} norms=${norms}`);
          assert.equal(count, want.filter(Boolean).length);
        }
      }
    }
  }
});

test('routing rules: thresholds above 1 run the argmax alone (top-k: and its ties), t <= 0 and NaN every expert, top-k keeps k', () => {
  const norms = Float32Array.from([0.2, 0.9, 0.4, 0.9, 0.1, 0.6, 0.3, 0.05]);
  for (const rule of ROUTING_RULES) {
    const mask = new Uint8Array(8);
    // nothing reaches 2 or 2 · max but the argmax (the first of the two largest); top-k keeps one, with its tie
    assert.equal(routeToken(norms, 0, 8, rule, 2, mask), rule === 'topk' ? 2 : 1, rule);
    assert.equal(mask[1], 1, `${rule}: the argmax runs`);
    for (const t of [0, -1, NaN]) assert.equal(routeToken(norms, 0, 8, rule, t), 8, `${rule} t=${t}`);
  }
  assert.deepEqual([0.25, 0.5, 0.875, 0.99, 1, 3].map((t) => topkCount(t, 8)), [6, 4, 1, 1, 1, 1]);
  // t·E in float32: 0.3 · 10 = 3.0000001 in float32 (floor 3), 0.7 · 10 = 7 exactly (floor 7)
  assert.deepEqual([0.3, 0.7].map((t) => topkCount(t, 10)), [7, 3]);
  assert.equal(routeToken(Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 0, 10, 'topk', 0.3), 7);
});

test('gridRunLimits: the largest grid threshold at which each expert runs, for every rule (calibration curves)', () => {
  const r = rng(5);
  const N = 50, E = 6;
  const norms = Float32Array.from({ length: N * E }, (_, i) => (i % 7 === 0 ? 0.5 : Math.fround(r())));
  const grid = Float32Array.from({ length: 41 }, (_, j) => j * 0.0375);
  for (const rule of ROUTING_RULES) {
    gridRunLimits(norms, N, E, rule, grid, (n, e, j) => {
      const row = Array.from(norms.subarray(n * E, (n + 1) * E));
      const runs = (g: number) => bruteForce(row, rule, g)[e];
      assert.ok(runs(grid[j]), `${rule}: runs at its limit`);
      if (j + 1 < grid.length) assert.ok(!runs(grid[j + 1]), `${rule}: not above its limit`);
    });
  }
});

interface Feed {
  X: Float32Array;
  norms: Float32Array;
}
interface Weights {
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  B2: Float32Array;
  skip: Float32Array;
}

function data(seed: number, B: number, L: number, D: number, E: number, S: number, ties: boolean): { w: Weights; f: Feed } {
  const r = rng(seed);
  const w = {
    W1: randomArray(r, D * E * S, 1 / Math.sqrt(D)), B1: randomArray(r, E * S, 0.1), W2: randomArray(r, E * S * D, 1 / Math.sqrt(E * S)),
    B2: randomArray(r, D, 0.1), skip: randomArray(r, E * D, 0.3),
  };
  const nd = Float32Array.from(randomArray(r, B * L * E), (v) => (ties ? Math.round(Math.abs(v) * 4) / 4 : Math.abs(v)));
  return { w, f: { X: randomArray(r, B * L * D), norms: nd } };
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

function reference(w: Weights, f: Feed, dims: number[], E: number, act: Activation, patchNums: number[], rule: RoutingRule, threshold: number[], skip: boolean) {
  const [B, L, D] = dims;
  const ES = w.B1.length;
  const t = (a: Float32Array, d: number[]) => new Tensor('float32', a, d);
  return dynamicMoeReference(
    { X: t(f.X, [B, L, D]), norms: t(f.norms, [B, L, E]), W1: t(w.W1, [D, ES]), B1: t(w.B1, [ES]), W2: t(w.W2, [ES, D]), B2: t(w.B2, [D]), threshold, skipBias: skip ? t(w.skip, [E, D]) : undefined },
    { numExperts: E, activation: act, patchNums, routing: rule },
  );
}

const PATCH = [1, 2, 3];
/** Per rule, run-time thresholds per scale that reach every regime: all, some, argmax alone, NaN, negative. */
const FEEDS: Record<RoutingRule, number[][]> = {
  relative: [[0, 0.5, 0.8], [0.3, 1.5, 1], [NaN, -1, 0.6]],
  absolute: [[0, 0.4, 0.7], [0.2, 2, 0.9], [NaN, -1, 0.5]],
  topk: [[0, 0.5, 0.75], [0.3, 1, 2], [NaN, -1, 0.9]],
};

interface KernelCase {
  name: string;
  D: number;
  E: number;
  S: number;
  B: number;
  act: Activation;
  weightsAsInputs?: boolean;
  skip: 'none' | 'initializer' | 'input';
  ties?: boolean;
}
const KERNEL_CASES: KernelCase[] = [
  { name: 'pre-packed weights, skip_bias initializer', B: 2, D: 24, E: 8, S: 6, act: 'relu', skip: 'initializer' },
  { name: 'pre-packed weights, ties, no skip_bias', B: 2, D: 40, E: 6, S: 10, act: 'gelu_tanh', skip: 'none', ties: true },
  { name: 'weights as inputs (OpenBLAS path), skip_bias input', B: 2, D: 20, E: 5, S: 7, act: 'gelu', weightsAsInputs: true, skip: 'input' },
  // top-k's cut above 64 experts is found by bisection instead of a quickselect
  { name: '72 experts, ties', B: 2, D: 16, E: 72, S: 2, act: 'relu', skip: 'initializer', ties: true },
];

async function kernelVsReference(c: KernelCase, rule: RoutingRule, f16: boolean, seed: number): Promise<void> {
  const L = 14;
  const { w, f } = data(seed, c.B, L, c.D, c.E, c.S, !!c.ties);
  const T = f16 ? 'float16' : 'float32';
  // float16: the data are float16 numbers, and the reference runs in float32 on them
  const q = (a: Float32Array) => (f16 ? fromHalfBits(toHalfBits(a)) : a);
  const wq: Weights = { W1: q(w.W1), B1: q(w.B1), W2: q(w.W2), B2: q(w.B2), skip: q(w.skip) };
  const fq: Feed = { X: q(f.X), norms: q(f.norms) };
  const enc = (a: Float32Array) => (f16 ? toHalfBits(a) : a);
  const tensor = (a: Float32Array, d: number[]) => (f16 ? new Tensor('float16', toHalfBits(a), d) : new Tensor('float32', a, d));
  const ES = c.E * c.S;
  const model = buildDynamicMoeModel({
    D: c.D, E: c.E, S: c.S, activation: c.act, patchNums: PATCH, threshold: [0, 0, 0], routing: rule, dtype: T, withB2: true,
    weights: c.weightsAsInputs ? undefined : { W1: enc(wq.W1), B1: enc(wq.B1), W2: enc(wq.W2), B2: enc(wq.B2) } as never,
    skipBias: c.skip === 'initializer' ? enc(wq.skip) : undefined, withSkipBiasInput: c.skip === 'input',
    withThresholdInput: true, withActive: true,
  });
  const s = await createSession(model, { intraOpNumThreads: 2 });
  try {
    for (const thr of [...FEEDS[rule], [0, 0, 0]]) {
      const feeds: Record<string, Tensor> = { X: tensor(fq.X, [c.B, L, c.D]), norms: tensor(fq.norms, [c.B, L, c.E]), threshold: new Tensor('float32', Float32Array.from(thr), [3]) };
      if (c.weightsAsInputs) Object.assign(feeds, { W1: tensor(wq.W1, [c.D, ES]), B1: tensor(wq.B1, [ES]), W2: tensor(wq.W2, [ES, c.D]), B2: tensor(wq.B2, [c.D]) });
      if (c.skip === 'input') feeds.skip_bias = tensor(wq.skip, [c.E, c.D]);
      const out = await s.run(feeds);
      const ref = reference(wq, fq, [c.B, L, c.D], c.E, c.act, PATCH, rule, thr, c.skip !== 'none');
      const what = `${c.name} ${rule} ${T} thresholds ${thr}`;
      assert.deepEqual(Array.from(out.active.data as Int32Array), Array.from(ref.active.data as Int32Array), `${what}: active`);
      const y = f16 ? fromHalfBits(out.Y.data as Uint16Array) : (out.Y.data as Float32Array);
      const err = relErr(y, ref.Y.data as Float32Array);
      assert.ok(err <= (f16 ? 1e-3 : 1e-5), `${what}: relative error ${err}`);
    }
  } finally {
    s.release();
  }
}

for (const level of cpuLevels()) {
  for (const f16 of [false, true]) {
    test(`kernel [${level}, ${f16 ? 'float16' : 'float32'}]: every routing rule and skip_bias against the reference`, async () => {
      process.env.MOEFY_CPU_LEVEL = level;
      try {
        for (const [i, c] of KERNEL_CASES.entries()) for (const rule of ROUTING_RULES) await kernelVsReference(c, rule, f16, 100 * i + ROUTING_RULES.indexOf(rule));
      } finally {
        delete process.env.MOEFY_CPU_LEVEL;
      }
    });
  }
}

test('kernel: at threshold 0 skip_bias adds nothing (bitwise the output without it), at every level and rule', async () => {
  const { w, f } = data(9, 2, 14, 32, 4, 8, false);
  const X = new Tensor('float32', f.X, [2, 14, 32]), norms = new Tensor('float32', f.norms, [2, 14, 4]);
  for (const level of cpuLevels()) {
    process.env.MOEFY_CPU_LEVEL = level;
    try {
      for (const rule of ROUTING_RULES) {
        const outs: Float32Array[] = [];
        for (const skipBias of [undefined, w.skip]) {
          const s = await createSession(buildDynamicMoeModel({ D: 32, E: 4, S: 8, patchNums: PATCH, threshold: [0, 0, 0], routing: rule, weights: w, skipBias }), { intraOpNumThreads: 2 });
          outs.push((await s.run({ X, norms })).Y.data as Float32Array);
          s.release();
        }
        assert.ok(Buffer.from(outs[0].buffer).equals(Buffer.from(outs[1].buffer)), `${level} ${rule}`);
      }
    } finally {
      delete process.env.MOEFY_CPU_LEVEL;
    }
  }
});

// The function body (stock ONNX Runtime: no moefy kernel registered) and the kernel on the same feeds, each against
// the reference: active counts exactly, outputs within float32 (float16: the body rounds its hidden layer to float16).
for (const f16 of [false, true]) {
  for (const act of ['relu', 'gelu_tanh'] as const) {
    test(`function body and kernel [${f16 ? 'float16' : 'float32'}, ${act}]: every routing rule, with and without skip_bias, like the reference`, async () => {
      const B = 2, L = 14, D = 16, E = 8, S = 4;
      for (const rule of ROUTING_RULES) {
        for (const skip of [false, true]) {
          const { w, f } = data(31 + ROUTING_RULES.indexOf(rule), B, L, D, E, S, rule === 'topk');
          const q = (a: Float32Array) => (f16 ? fromHalfBits(toHalfBits(a)) : a);
          const enc = (a: Float32Array) => (f16 ? toHalfBits(a) : a);
          const wq: Weights = { W1: q(w.W1), B1: q(w.B1), W2: q(w.W2), B2: q(w.B2), skip: q(w.skip) };
          const fq: Feed = { X: q(f.X), norms: q(f.norms) };
          const model = buildDynamicMoeModel({
            D, E, S, activation: act, patchNums: PATCH, threshold: [0, 0, 0], routing: rule, dtype: f16 ? 'float16' : 'float32',
            weights: { W1: enc(wq.W1), B1: enc(wq.B1), W2: enc(wq.W2), B2: enc(wq.B2) } as never, skipBias: skip ? enc(wq.skip) : undefined,
            withThresholdInput: true, thresholdDefault: [0, 0.5, 0.8], withActive: true, withFunctionBody: true,
          });
          const kern = await createSession(model, { intraOpNumThreads: 2 });
          const body = await createSession(model, { intraOpNumThreads: 2, registerMoefyOps: false });
          try {
            for (const thr of FEEDS[rule]) {
              const T = (a: Float32Array, d: number[]) => (f16 ? new Tensor('float16', toHalfBits(a), d) : new Tensor('float32', a, d));
              const feeds = { X: T(fq.X, [B, L, D]), norms: T(fq.norms, [B, L, E]), threshold: new Tensor('float32', Float32Array.from(thr), [3]) };
              const ref = reference(wq, fq, [B, L, D], E, act, PATCH, rule, thr, skip);
              const refActive = Array.from(ref.active.data as Int32Array);
              assert.ok(refActive.some((a) => a < E), `${rule} ${thr}: the feed skips experts`);
              for (const [name, s] of [['kernel', kern], ['function body', body]] as const) {
                const out = await s.run(feeds);
                const what = `${name} ${rule} skip_bias ${skip} thresholds ${thr}`;
                assert.deepEqual(Array.from(out.active.data as Int32Array), refActive, `${what}: active`);
                const y = f16 ? fromHalfBits(out.Y.data as Uint16Array) : (out.Y.data as Float32Array);
                const err = relErr(y, ref.Y.data as Float32Array);
                assert.ok(err <= (f16 ? 4e-3 : 1e-5), `${what}: relative error ${err}`);
              }
            }
          } finally {
            kern.release();
            body.release();
          }
        }
      }
    });
  }
}

// Made by the code before contract version 2 (commit 961f649): no routing attribute, no skip_bias input, that
// version's function body. The kernel, that body and the reference (relative rule) agree as they did, calibrated
// (the initializer) and fed, for thresholds in [0, 1] (outside it the old body ran no expert; version 2 runs the
// argmax).
test('models made before contract version 2 run unchanged: kernel, their own function body and the reference agree', async () => {
  for (const [file, f16, act] of [['dynamic-moe-v1.onnx', false, 'relu'], ['dynamic-moe-v1-f16.onnx', true, 'gelu_tanh']] as const) {
    const model = path.join(repoRoot, 'fixtures', file);
    const kern = await createSession(model, { intraOpNumThreads: 2 });
    const body = await createSession(model, { intraOpNumThreads: 2, registerMoefyOps: false });
    try {
      assert.deepEqual(kern.overridableInitializerMetadata.map((x) => x.name), ['moe_threshold']);
      const B = 2, L = 14, D = 16, E = 4;
      const r = rng(5);
      const q = (a: Float32Array) => (f16 ? fromHalfBits(toHalfBits(a)) : a);
      const X = q(randomArray(r, B * L * D)), N = q(Float32Array.from(randomArray(r, B * L * E), Math.abs));
      const T = (a: Float32Array, d: number[]) => (f16 ? new Tensor('float16', toHalfBits(a), d) : new Tensor('float32', a, d));
      // the model's weights, for the reference
      const { loadModel } = await import('../src/onnx/io');
      const m = loadModel(model);
      const init = (n: string) => {
        const t = m.graph.initializers.find((v) => v.name === n)!.tensor!;
        return new Tensor('float32', t.toFloat32(), t.dims);
      };
      for (const thr of [undefined, [0, 0.3, 1], [1, 0.6, 0]]) {
        const feeds: Record<string, Tensor> = { X: T(X, [B, L, D]), norms: T(N, [B, L, E]) };
        if (thr) feeds.moe_threshold = new Tensor('float32', Float32Array.from(thr), [3]);
        const ref = dynamicMoeReference(
          { X: new Tensor('float32', X, [B, L, D]), norms: new Tensor('float32', N, [B, L, E]), W1: init('W1'), B1: init('B1'), W2: init('W2'), B2: init('B2'), threshold: thr ?? [0, 0.5, 0.8] },
          { numExperts: E, activation: act, patchNums: PATCH },
        );
        const a = await kern.run(feeds), b = await body.run(feeds);
        for (const [name, out] of [['kernel', a], ['function body', b]] as const) {
          assert.deepEqual(Array.from(out.active.data as Int32Array), Array.from(ref.active.data as Int32Array), `${file} ${name} ${thr}: active`);
          const y = f16 ? fromHalfBits(out.Y.data as Uint16Array) : (out.Y.data as Float32Array);
          const err = relErr(y, ref.Y.data as Float32Array);
          assert.ok(err <= (f16 ? 4e-3 : 1e-5), `${file} ${name} ${thr}: relative error ${err}`);
        }
      }
    } finally {
      kern.release();
      body.release();
    }
  }
});

test('kernel: an unknown routing is refused when the session is made; a skip_bias of the wrong shape or type at run time, and the session keeps working', async () => {
  await assert.rejects(
    createSession(buildDynamicMoeModel({ D: 8, E: 4, S: 3, patchNums: PATCH, routing: 'nearest' as RoutingRule, withB2: true }), { intraOpNumThreads: 1 }),
    (e: Error) => e instanceof MoefyError && /unknown routing "nearest" \(relative, absolute, topk\)/.test(e.message),
  );
  const s = await createSession(buildDynamicMoeModel({ D: 8, E: 4, S: 3, patchNums: PATCH, threshold: [0.5, 0.5, 0.5], routing: 'topk', withB2: true, withSkipBiasInput: true }), { intraOpNumThreads: 1 });
  const f32 = (dims: number[]) => new Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(0.5), dims);
  const good = { X: f32([1, 14, 8]), norms: f32([1, 14, 4]), W1: f32([8, 12]), B1: f32([12]), W2: f32([12, 8]), B2: f32([8]) };
  await assert.rejects(s.run({ ...good, skip_bias: f32([8, 4]) }), (e: Error) => e instanceof MoefyError && /skip_bias has shape \[8, 4\], expected \[4, 8\]/.test(e.message));
  // (ONNX Runtime refuses a float16 skip_bias beside float32 X itself, by the op's type constraint)
  await assert.rejects(s.run({ ...good, skip_bias: new Tensor('float16', new Uint16Array(32), [4, 8]) }), (e: Error) => e instanceof MoefyError && /skip_bias|type/.test(e.message));
  const out = await s.run({ ...good, skip_bias: f32([4, 8]) });
  assert.deepEqual([...out.Y.dims], [1, 14, 8]);
  s.release();
});
