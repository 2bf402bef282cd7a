// Converted fixtures through moefy's runtime (the native DynamicMoE kernel) against the function-body path on stock
// onnxruntime-node, and against the dense model when every threshold is 0 (issue 4).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { Tensor } from 'onnxruntime-common';
import { createSession } from '../src/runtime';
import { analyseVar } from '../src/analysis/var-structure';
import { loadModel } from '../src/onnx/io';
import { convert } from '../src/pipeline';
import { relufied } from './helpers/relufied';
import { fixture, readIo, rmDir, tmpDir } from './helpers/fixtures';
import { FAST as FAST_BASE } from './helpers/fast';

// Routers a little wider than the other tests' so that threshold 0.3 leaves a mix of experts on.
const FAST = { ...FAST_BASE, routerWidth: 32, routerEpochs: 2, maxTokens: 8192 };

function feeds(io: ReturnType<typeof readIo>, names: readonly string[]): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const n of names) if (io[n]) out[n] = new Tensor(io[n].dtype as never, io[n].data as never, io[n].shape);
  return out;
}

async function stock(model: string | Uint8Array, io: ReturnType<typeof readIo>): Promise<Record<string, Float32Array>> {
  const s = await ort.InferenceSession.create(model as never, { logSeverityLevel: 3 });
  const r = await s.run(feeds(io, s.inputNames) as never);
  await s.release();
  return Object.fromEntries(Object.entries(r).map(([k, t]) => [k, t.data as Float32Array]));
}

async function native(model: string, io: ReturnType<typeof readIo>): Promise<Record<string, Float32Array>> {
  const s = await createSession(model, { intraOpNumThreads: 2 });
  const r = await s.run(feeds(io, s.inputNames));
  s.release();
  return Object.fromEntries(Object.entries(r).map(([k, t]) => [k, t.data as Float32Array]));
}

function relMaxErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0, n = 0;
  for (let i = 0; i < a.length; i++) {
    m = Math.max(m, Math.abs(a[i] - b[i]));
    n = Math.max(n, Math.abs(b[i]));
  }
  return m / Math.max(n, 1e-12);
}


const CASES = [
  { model: 'var_tiny_full.onnx', io: 'var_tiny_full_io', out: 'logits_BLV' },
  { model: 'var_tiny_step.onnx', io: 'var_tiny_step_io', out: 'logits_BlV' },
  { model: 'var_tiny_step_last_static.onnx', io: 'var_tiny_step_last_static_io', out: 'logits_BlV' },
];

for (const c of CASES) {
  test(`runtime: converted ${c.model} matches the function body (thresholds > 0) and the dense model (thresholds 0)`, async () => {
    const dir = tmpDir('rt-conv');
    try {
      const io = readIo(fixture(c.io));
      // Thresholds between 0 and 1 from scale 1, so the kernel really skips experts everywhere.
      const sparse = path.join(dir, 'sparse.moe.onnx');
      const r = await convert(fixture(c.model), { ...FAST, experts: 8, fromScale: 1, thresholds: [0.3], output: sparse });
      assert.ok(r.scales.every((s) => s.threshold === 0.3));
      const kern = await native(sparse, io);
      const body = await stock(sparse, io);
      for (const k of Object.keys(body)) assert.ok(relMaxErr(kern[k], body[k]) < 1e-5, `${k}: kernel vs function body ${relMaxErr(kern[k], body[k])}`);
      // The kernel really runs fewer experts: the outputs differ from the dense model.
      const dense = await stock(relufied(fixture(c.model)), io);
      assert.ok(relMaxErr(kern[c.out], dense[c.out]) > 1e-4, 'thresholds 0.3 changed nothing');

      const full = path.join(dir, 'dense.moe.onnx');
      await convert(fixture(c.model), { ...FAST, experts: 8, fromScale: 1, thresholds: [0], output: full });
      const k0 = await native(full, io);
      for (const k of Object.keys(dense)) assert.ok(relMaxErr(k0[k], dense[k]) < 1e-5, `${k}: kernel at threshold 0 vs dense ${relMaxErr(k0[k], dense[k])}`);
    } finally {
      rmDir(dir);
    }
  });
}

test('runtime: moe_threshold is overridable per run (zeros = every expert = the dense model)', async () => {
  const dir = tmpDir('rt-ovr');
  try {
    const io = readIo(fixture('var_tiny_full_io'));
    const file = path.join(dir, 'm.moe.onnx');
    await convert(fixture('var_tiny_full.onnx'), { ...FAST, experts: 8, fromScale: 8, thresholds: [0.5], output: file });
    const s = await createSession(file, { intraOpNumThreads: 2 });
    assert.deepEqual([...s.overridableInitializerNames], ['moe_threshold']);
    const f = feeds(io, s.inputNames);
    const sparse = (await s.run(f)).logits_BLV.data as Float32Array;
    const zeros = (await s.run({ ...f, moe_threshold: new Tensor('float32', new Float32Array(10), [10]) })).logits_BLV.data as Float32Array;
    s.release();
    const dense = (await stock(relufied(fixture('var_tiny_full.onnx')), io)).logits_BLV;
    assert.ok(relMaxErr(zeros, dense) < 1e-5, `override to 0 vs dense ${relMaxErr(zeros, dense)}`);
    assert.ok(relMaxErr(sparse, dense) > 1e-4, 'the calibrated default skipped nothing');
  } finally {
    rmDir(dir);
  }
});

for (const routing of ['relative', 'absolute', 'topk'] as const) {
  test(`runtime: --routing ${routing} --skip-bias (fitted alone): the nodes carry the rule and skip_bias, kernel = function body, moe_threshold 0 = the dense model`, async () => {
    const dir = tmpDir('rt-rule');
    try {
      const io = readIo(fixture('var_tiny_full_io'));
      const file = path.join(dir, `${routing}.moe.onnx`);
      const r = await convert(fixture('var_tiny_full.onnx'), { ...FAST, experts: 8, fromScale: 8, budget: 0.5, routing, skipBias: true, repair: false, output: file });
      assert.equal(r.options.routing, routing);
      assert.ok(r.layers.every((l) => l.repair?.skipBias), 'a skip_bias per layer');
      const moe = analyseVar(loadModel(file)).blocks.map((b) => b.moe!);
      for (const m of moe) {
        assert.equal(m.routing, routing);
        assert.equal(m.skipBias, true);
        // relative is the attribute's default: not written, as in every model made before the attribute.
        assert.equal(m.node.attr('routing') === undefined, routing === 'relative');
      }
      const kern = await native(file, io);
      const body = await stock(file, io);
      for (const k of Object.keys(body)) assert.ok(relMaxErr(kern[k], body[k]) < 1e-5, `${k}: kernel vs function body ${relMaxErr(kern[k], body[k])}`);
      const dense = (await stock(relufied(fixture('var_tiny_full.onnx')), io)).logits_BLV;
      assert.ok(relMaxErr(kern.logits_BLV, dense) > 1e-4, 'the budget skipped nothing');
      // Every expert on: skip_bias adds nothing and the experts are the model's own.
      const s = await createSession(file, { intraOpNumThreads: 2 });
      const zeros = (await s.run({ ...feeds(io, s.inputNames), moe_threshold: new Tensor('float32', new Float32Array(10), [10]) })).logits_BLV.data as Float32Array;
      s.release();
      assert.ok(relMaxErr(zeros, dense) < 1e-5, `threshold 0 vs dense ${relMaxErr(zeros, dense)}`);
    } finally {
      rmDir(dir);
    }
  });
}
