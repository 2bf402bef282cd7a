// The router's graph form (src/analysis/router-graph.ts): written, read back with the same weights, run in ONNX
// Runtime to its plain TypeScript reference, and the training code's prediction graph computes the same function.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { readRouter, routerNorms, RouterWeights, writeRouter } from '../src/analysis/router-graph';
import { gaussian, rng } from '../src/calib/random';
import { predictNorms } from '../src/calib/router-train';
import { Graph } from '../src/ir/graph';
import { Model } from '../src/ir/model';
import { decodeModel, encodeModel } from '../src/onnx/io';
import { DataType } from '../src/onnx/schema';
import { halfToFloat, floatToHalf } from './helpers/half';

function router(seed: number, squared: boolean, D = 24, width = 16, E = 6): RouterWeights {
  const g = gaussian(rng(seed));
  return { D, width, E, W1: Float32Array.from({ length: D * width }, () => g() / Math.sqrt(D)), W2: Float32Array.from({ length: width * E }, () => g() / Math.sqrt(width)), squared };
}

/** A model X [N, D] → norms holding only the router, saved and loaded again. */
function routerModel(r: RouterWeights, opset: number, dataType: number = DataType.FLOAT): Model {
  const g = new Graph('router');
  const x = g.getOrCreate('X');
  x.setTensorType(dataType, ['N', r.D]);
  g.inputs.push(x);
  const norms = writeRouter(g, x, r, { opset, dataType, name: '/moefy/block0/router', normsName: 'norms' });
  norms.setTensorType(dataType, ['N', r.E]);
  g.outputs.push(norms);
  return decodeModel(encodeModel(new Model({ ir_version: 8, opset_import: [{ version: opset }] } as never, g)));
}

const cases = [
  { opset: 17, squared: true },
  { opset: 17, squared: false },
  { opset: 20, squared: true },
  { opset: 20, squared: false },
];

test('written, then read back from the saved model: the same sizes and weights', () => {
  for (const c of cases) {
    const r = router(1, c.squared);
    const m = routerModel(r, c.opset);
    const back = readRouter(m.graph.value('norms'));
    assert.ok(back, `opset ${c.opset} squared ${c.squared}: read back`);
    assert.deepEqual({ ...back, W1: [...back.W1], W2: [...back.W2] }, { ...r, W1: [...r.W1], W2: [...r.W2] });
  }
  // float16: the weights as the model holds them (rounded to float16).
  const r = router(2, true);
  const back = readRouter(routerModel(r, 20, DataType.FLOAT16).graph.value('norms'))!;
  const half = (a: Float32Array) => [...a].map((v) => halfToFloat(floatToHalf(v)));
  assert.deepEqual([...back.W1], half(r.W1));
  assert.deepEqual([...back.W2], half(r.W2));
});

test('the written router run in ONNX Runtime equals its TypeScript reference (GELU one op and in standard ops)', async () => {
  const N = 50;
  for (const c of cases) {
    const r = router(3, c.squared);
    const g = gaussian(rng(4));
    const X = Float32Array.from({ length: N * r.D }, () => g());
    const s = await ort.InferenceSession.create(encodeModel(routerModel(r, c.opset)));
    const got = (await s.run({ X: new ort.Tensor('float32', X, [N, r.D]) })).norms.data as Float32Array;
    await s.release();
    const ref = routerNorms(r);
    let worst = 0;
    for (let n = 0; n < N; n++) {
      const want = ref(X, n);
      for (let e = 0; e < r.E; e++) worst = Math.max(worst, Math.abs(got[n * r.E + e] - want[e]) / (1e-3 + Math.abs(want[e])));
    }
    assert.ok(worst < 1e-4, `opset ${c.opset} squared ${c.squared}: worst relative difference ${worst}`);
  }
});

test("router training's prediction graph is the same router (unsquared)", async () => {
  const r = router(5, false);
  const N = 40;
  const g = gaussian(rng(6));
  const X = Float32Array.from({ length: N * r.D }, () => g());
  const p = await predictNorms(X, N, r.D, r.W1, r.W2, r.E, r.width);
  const ref = routerNorms(r);
  for (let n = 0; n < N; n++) {
    const want = ref(X, n);
    for (let e = 0; e < r.E; e++) assert.ok(Math.abs(p[n * r.E + e] - want[e]) <= 2e-5 * (1e-3 + Math.abs(want[e])) + 1e-7, `row ${n} expert ${e}: ${p[n * r.E + e]} vs ${want[e]}`);
  }
});

test('a subgraph in another form is not read as a router', () => {
  const m = routerModel(router(7, true), 20);
  // Replace the Abs by a Relu: not the router's form.
  const abs = m.graph.nodes.find((n) => n.opType === 'Abs')!;
  abs.opType = 'Relu';
  assert.equal(readRouter(m.graph.value('norms')), null);
});
