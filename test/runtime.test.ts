// The moefy runtime: sessions on onnxruntime-node's ONNX Runtime with libmoefy_ops.so registered.
import { test } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tensor, InferenceSession } from 'onnxruntime-node';
import { onnx } from 'onnx-proto';
import { createSession, libPath, ortVersion, summarizeActive, formatActiveSummary } from '../src/runtime';
import { buildDenseFfnModel, buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';
import { MoefyError } from '../src/errors';

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num) / Math.sqrt(den);
}

test('runtime: libPath points at the built library, ORT is the onnxruntime-node copy', () => {
  const p = libPath();
  assert.ok(path.isAbsolute(p));
  assert.ok(fs.existsSync(p), `${p} missing`);
  assert.match(ortVersion(), /^1\.30\./);
});

test('runtime: all thresholds 0 equals the dense FFN of stock onnxruntime-node', async () => {
  const r = rng(7);
  const D = 32, E = 8, S = 12, H = E * S, B = 2, L = 30;
  const w = {
    W1: randomArray(r, D * H, 1 / Math.sqrt(D)),
    B1: randomArray(r, H, 0.1),
    W2: randomArray(r, H * D, 1 / Math.sqrt(H)),
    B2: randomArray(r, D, 0.1),
  };
  const X = randomArray(r, B * L * D);
  const norms = Float32Array.from(randomArray(r, B * L * E), Math.abs);
  const dense = await InferenceSession.create(buildDenseFfnModel(D, H, w), { intraOpNumThreads: 2 });
  const yd = (await dense.run({ X: new Tensor('float32', X, [B, L, D]) })).Y.data as Float32Array;
  const moe = await createSession(
    buildDynamicMoeModel({ D, E, S, patchNums: [1, 2, 5], threshold: [0, 0, 0], weights: w, withActive: true }),
    { intraOpNumThreads: 2 },
  );
  const out = await moe.run({ X: new Tensor('float32', X, [B, L, D]), norms: new Tensor('float32', norms, [B, L, E]) });
  assert.ok(relErr(out.Y.data as Float32Array, yd) <= 1e-5);
  assert.ok(Array.from(out.active.data as Int32Array).every((v) => v === E));
  // fetch a subset of outputs
  const only = await moe.run({ X: new Tensor('float32', X, [B, L, D]), norms: new Tensor('float32', norms, [B, L, E]) }, ['active']);
  assert.deepStrictEqual(Object.keys(only), ['active']);
  moe.release();
  await dense.release();
});

test('runtime: large outputs (recycled buffers) stay intact while held, across many runs, and equal stock ORT', async () => {
  // Outputs of 64 KiB to 64 MiB are copied into recycled blocks: a block must never be reused while an output
  // still holds it. Keep every 7th output of 300 runs on changing inputs (collections happen meanwhile) and check
  // each against stock onnxruntime-node at the end.
  const r = rng(11);
  const D = 256, H = 8, L = 96; // Y: 96 KiB, and 384 KiB at L 384
  const w = { W1: randomArray(r, D * H), B1: randomArray(r, H), W2: randomArray(r, H * D), B2: randomArray(r, D) };
  const model = buildDenseFfnModel(D, H, w);
  const stock = await InferenceSession.create(model);
  const s = await createSession(model);
  const kept: { X: Float32Array; len: number; Y: Float32Array }[] = [];
  for (let i = 0; i < 300; i++) {
    const len = i % 2 ? L : 4 * L;
    const X = randomArray(r, len * D);
    const Y = (await s.run({ X: new Tensor('float32', X, [1, len, D]) })).Y.data as Float32Array;
    assert.strictEqual(Y.length, len * D);
    if (i % 7 === 0) kept.push({ X, len, Y });
    if (i % 50 === 0) await new Promise((res) => setImmediate(res)); // let finalizers run
  }
  for (const k of kept) {
    const ref = (await stock.run({ X: new Tensor('float32', k.X, [1, k.len, D]) })).Y.data as Float32Array;
    assert.ok(relErr(k.Y, ref) <= 1e-6, `held output of length ${k.len} changed`);
  }
  s.release();
  await stock.release();
});

test('runtime: without the library the function-body-free op fails cleanly', async () => {
  const model = buildDynamicMoeModel({ D: 8, E: 2, S: 4, patchNums: [1, 2], withB2: true });
  await assert.rejects(createSession(model, { registerMoefyOps: false }), (e: Error) => e instanceof MoefyError && /DynamicMoE|ai\.moefy/.test(e.message));
});

test('runtime: errors are MoefyError (missing model, unknown input, released session)', async () => {
  await assert.rejects(createSession('/nonexistent/model.onnx'), MoefyError);
  await assert.rejects(createSession(new Uint8Array([1, 2, 3])), MoefyError);
  const s = await createSession(buildDynamicMoeModel({ D: 8, E: 2, S: 4, patchNums: [1, 2], withB2: true }));
  await assert.rejects(s.run({ nope: new Tensor('float32', new Float32Array(1), [1]) }), /unknown input "nope"/);
  await assert.rejects(s.run({}, ['nope']), /unknown output/);
  s.release();
  await assert.rejects(s.run({}), /released/);
});

function identityModel(): Uint8Array {
  const vi = (name: string, t: number): onnx.IValueInfoProto => ({ name, type: { tensorType: { elemType: t } } });
  const types: [string, number][] = [['i64', 7], ['b', 9], ['i32', 6], ['h', 10], ['d', 11]];
  return onnx.ModelProto.encode({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    graph: {
      name: 'id',
      node: types.map(([n]) => ({ opType: 'Identity', input: [n], output: [`${n}_out`] })),
      input: types.map(([n, t]) => vi(n, t)),
      output: types.map(([n, t]) => vi(`${n}_out`, t)),
    },
  }).finish();
}

test('runtime: int64, bool, int32, float16, float64 tensors round-trip', async () => {
  const s = await createSession(identityModel());
  assert.deepStrictEqual([...s.inputNames], ['i64', 'b', 'i32', 'h', 'd']);
  const feeds = {
    i64: new Tensor('int64', BigInt64Array.from([1n, -2n, 1n << 50n]), [3]),
    b: new Tensor('bool', Uint8Array.from([1, 0]), [2, 1]),
    i32: new Tensor('int32', Int32Array.from([5]), []),
    h: new Tensor('float16', Uint16Array.from([0x3c00, 0x4000]), [2]),
    d: new Tensor('float64', Float64Array.from([Math.PI]), [1]),
  };
  const out = await s.run(feeds);
  for (const k of Object.keys(feeds) as (keyof typeof feeds)[]) {
    const o = out[`${k}_out`];
    assert.strictEqual(o.type, feeds[k].type);
    assert.deepStrictEqual([...o.dims], [...feeds[k].dims]);
    assert.deepStrictEqual(Array.from(o.data as ArrayLike<unknown>), Array.from(feeds[k].data as ArrayLike<unknown>));
  }
  s.release();
});

test('runtime: summarizeActive gives the mean experts per scale', () => {
  // full sequence of patch_nums 1,2: scale 0 = position 0, scale 1 = positions 1..4
  const a = new Tensor('int32', Int32Array.from([4, 1, 2, 3, 2, 4, 3, 3, 3, 3]), [2, 5]);
  const s = summarizeActive([a, a], { patchNums: [1, 2], numExperts: 4 });
  assert.strictEqual(s.layers, 2);
  assert.deepStrictEqual(s.perScale.map((e) => [e.scale, e.tokens, e.meanActive]), [[0, 4, 4], [1, 16, 2.5]]);
  assert.strictEqual(s.perScale[1].fraction, 2.5 / 4);
  assert.ok(formatActiveSummary(s).some((l) => l.startsWith('scale 2 (2x2): 2.50 experts/token (62.5%)')));
  const step = summarizeActive(new Tensor('int32', Int32Array.from([1, 2, 3, 4]), [1, 4]), { patchNums: [1, 2, 3] });
  assert.deepStrictEqual(step.perScale.map((e) => e.scale), [1]);
  assert.throws(() => summarizeActive(new Tensor('int32', new Int32Array(6), [1, 6]), { patchNums: [1, 2] }), MoefyError);
});

for (const [E, L] of [[4, 14], [2, 180], [12, 180]] as const) {
  test(`runtime: concurrent runs on one session agree bitwise, with any thread count (E ${E}, L ${L})`, async () => {
    const r = rng(11 + E);
    const D = 24, S = 16, B = 2;
    const patchNums = L === 14 ? [1, 2, 3] : [4, 8, 10];
    const w = { W1: randomArray(r, D * E * S), B1: randomArray(r, E * S), W2: randomArray(r, E * S * D), B2: randomArray(r, D) };
    const model = buildDynamicMoeModel({ D, E, S, patchNums, threshold: [0.3, 0.5, 0.7], weights: w });
    const s = await createSession(model, { intraOpNumThreads: 2 });
    const feeds = [0, 1, 2, 3].map(() => ({
      X: new Tensor('float32', randomArray(r, B * L * D), [B, L, D]),
      norms: new Tensor('float32', Float32Array.from(randomArray(r, B * L * E), Math.abs), [B, L, E]),
    }));
    const serial: Float32Array[] = [];
    for (const f of feeds) serial.push((await s.run(f)).Y.data as Float32Array);
    const parallel = await Promise.all([...feeds, ...feeds].map((f) => s.run(f)));
    parallel.forEach((o, i) => assert.deepStrictEqual(o.Y.data, serial[i % 4]));
    s.release();
    // bitwise the same whatever the thread count
    for (const threads of [1, 3]) {
      const s1 = await createSession(model, { intraOpNumThreads: threads });
      for (let i = 0; i < 4; i++) assert.deepStrictEqual((await s1.run(feeds[i])).Y.data, serial[i]);
      s1.release();
    }
  });
}

test('runtime: an overridable initializer (threshold defaults) can be fed or left alone', async () => {
  const r = rng(5);
  const D = 8, E = 4, S = 4, B = 1, L = 5;
  const w = { W1: randomArray(r, D * E * S), B1: randomArray(r, E * S), W2: randomArray(r, E * S * D), B2: randomArray(r, D) };
  const s = await createSession(
    buildDynamicMoeModel({ D, E, S, patchNums: [1, 2], weights: w, withThresholdInput: true, thresholdDefault: [2, 2], withActive: true }),
  );
  assert.deepStrictEqual([...s.inputNames], ['X', 'norms']);
  assert.deepStrictEqual([...s.overridableInitializerNames], ['threshold']);
  const feeds = {
    X: new Tensor('float32', randomArray(r, B * L * D), [B, L, D]),
    norms: new Tensor('float32', Float32Array.from(randomArray(r, B * L * E), Math.abs), [B, L, E]),
  };
  const def = await s.run(feeds);
  assert.ok(Array.from(def.active.data as Int32Array).every((v) => v === 1));
  const dense = await s.run({ ...feeds, threshold: new Tensor('float32', new Float32Array(2), [2]) });
  assert.ok(Array.from(dense.active.data as Int32Array).every((v) => v === E));
  s.release();
});

test('runtime: shape inference keeps unknown dims unknown (Shape of Y is the real shape)', async () => {
  const r = rng(9);
  const D = 8, E = 2, S = 4;
  const w = { W1: randomArray(r, D * E * S), B1: randomArray(r, E * S), W2: randomArray(r, E * S * D), B2: randomArray(r, D) };
  for (const dims of [{ batchDim: null, seqDim: null }, { batchDim: 'B', seqDim: 'L' }, { batchDim: 2, seqDim: 5 }] as const) {
    const s = await createSession(
      buildDynamicMoeModel({ D, E, S, patchNums: [1, 2], threshold: [0.5, 0.5], weights: w, withActive: true, withShapeOutput: true, ...dims }),
      { graphOptimizationLevel: 'all' },
    );
    const out = await s.run({
      X: new Tensor('float32', randomArray(r, 2 * 5 * D), [2, 5, D]),
      norms: new Tensor('float32', Float32Array.from(randomArray(r, 2 * 5 * E), Math.abs), [2, 5, E]),
    });
    assert.deepStrictEqual(Array.from(out.Y_shape.data as BigInt64Array), [2n, 5n, BigInt(D)], JSON.stringify(dims));
    assert.deepStrictEqual([...out.active.dims], [2, 5]);
    s.release();
  }
});

test('runtime: the registered kernel takes precedence over a model-local function body', async () => {
  const r = rng(21);
  const D = 8, E = 4, S = 4, B = 1, L = 5;
  const w = { W1: randomArray(r, D * E * S), B1: randomArray(r, E * S), W2: randomArray(r, E * S * D), B2: randomArray(r, D) };
  const model = buildDynamicMoeModel({ D, E, S, patchNums: [1, 2], threshold: [0, 0], weights: w, withActive: true, withMarkerFunctionBody: true });
  const X = new Tensor('float32', randomArray(r, B * L * D), [B, L, D]);
  const norms = new Tensor('float32', Float32Array.from(randomArray(r, B * L * E), (v) => Math.abs(v) + 1), [B, L, E]);
  const kernel = await createSession(model);
  const k = await kernel.run({ X, norms });
  assert.ok(Array.from(k.active.data as Int32Array).every((v) => v === E));
  assert.notDeepStrictEqual(Array.from(k.Y.data as Float32Array), Array.from(X.data as Float32Array));
  kernel.release();
  const body = await createSession(model, { registerMoefyOps: false });
  const b = await body.run({ X, norms });
  assert.deepStrictEqual(Array.from(b.Y.data as Float32Array), Array.from(X.data as Float32Array));
  body.release();
});
