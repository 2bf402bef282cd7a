// Each conversion stage on its own, on small inputs, against references written here (the end-to-end tests in
// convert*.test.ts check the stages together).
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { fc1Weights, fc2Weights } from '../src/analysis/ffn-weights';
import { analyseVar, FfnSite, VarStructure } from '../src/analysis/var-structure';
import { expertNormsReference } from './helpers/expert-norms-reference';
import { Model } from '../src/ir/model';
import { encodeCopy, encodeModel, loadModel } from '../src/onnx/io';
import { activate } from '../src/op';
import { relufied, relufyStage } from '../src/stages/relufy';
import { Lendable } from '../src/calib/layer-pool';
import { resolveForModel } from '../src/convert-options';
import { capture } from '../src/stages/capture';
import { cluster } from '../src/stages/cluster';
import { permute } from '../src/stages/permute';
import { normaliseRouters, trainRouters } from '../src/stages/routers';
import { routerNorms } from '../src/analysis/router-graph';
import { routeTokens } from '../src/op';
import { chooseThresholds } from '../src/stages/thresholds';
import { FfnInputSample, RouterSet } from '../src/stages/types';
import { sliceFeeds } from '../src/calib/inputs';
import { generate } from '../src/eval/generate';
import { readTensorSet } from '../src/io';
import { fixture, GELU_STEPS, repoRoot, rmDir, tmpDir } from './helpers/fixtures';

const SMALL = path.join(repoRoot, 'fixtures', 'small-var.onnx');
const SMALL_CALIB = path.join(repoRoot, 'fixtures', 'small-var-calib');
const PATCH = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16];

function open(file: string): { model: Model; s: VarStructure; sites: FfnSite[] } {
  const model = loadModel(file);
  const s = analyseVar(model);
  return { model, s, sites: s.blocks.map((b) => b.ffn!) };
}

/** Scale of each position of the full sequence, by a plain walk over the patch sides. */
function scalesOfSequence(): number[] {
  const out: number[] = [];
  PATCH.forEach((p, s) => {
    for (let i = 0; i < p * p; i++) out.push(s);
  });
  return out;
}

/** FFN(x) for one row in plain TypeScript from the site's weights. */
function ffnRow(site: FfnSite, x: Float32Array, kind = site.activation.kind): Float64Array {
  const { W1, B1 } = fc1Weights(site);
  const { W2, B2 } = fc2Weights(site);
  const { D, H } = site;
  const y = new Float64Array(D);
  for (let j = 0; j < H; j++) {
    let a = B1[j];
    for (let d = 0; d < D; d++) a += x[d] * W1[d * H + j];
    const h = activate(a, kind);
    for (let d = 0; d < D; d++) y[d] += h * W2[j * D + d];
  }
  if (B2) for (let d = 0; d < D; d++) y[d] += B2[d];
  return y;
}

let sampleCache: Promise<FfnInputSample> | null = null;
const smallSample = () => (sampleCache ??= (async () => {
  const { model, s, sites } = open(SMALL);
  return capture(model, s, sites, { calib: SMALL_CALIB, synthSamples: 0, seed: 0, maxTokens: 1 << 20 });
})());

test('capture → FfnInputSample: every FFN input of every calibration token, with its scale', async () => {
  const { model, s, sites } = open(SMALL);
  const sample = await smallSample();
  assert.equal(sample.layers.length, sites.length);
  assert.equal(sample.source, 'calibration');
  assert.equal(sample.samples, 8);
  const L = 680, samples = 8;
  const want = scalesOfSequence();
  for (const c of sample.layers) {
    assert.equal(c.N, samples * L);
    assert.equal(c.D, s.D);
    for (let i = 0; i < c.N; i++) if (c.scaleOfToken[i] !== want[i % L]) assert.fail(`token ${i}: scale ${c.scaleOfToken[i]}, expected ${want[i % L]}`);
  }
  // The same values from a session on a copy whose outputs are the FFN outputs: FFN(captured input) = FFN output.
  const sess = await ort.InferenceSession.create(encodeCopy(model, { outputs: sites.map((x) => x.output) }));
  const { readTensorSet } = await import('../src/io');
  const set = (await readTensorSet(SMALL_CALIB)) as unknown as Record<string, ort.Tensor>;
  const one = {
    label_B: new ort.Tensor('int64', (set.label_B.data as BigInt64Array).slice(0, 1), [1]),
    x_BLCv_wo_first_l: new ort.Tensor('float32', (set.x_BLCv_wo_first_l.data as Float32Array).slice(0, 679 * 32), [1, 679, 32]),
  };
  const r = await sess.run(one);
  await sess.release();
  sites.forEach((site, k) => {
    const out = r[site.output.name].data as Float32Array;
    for (const t of [0, 1, 300, 679]) {
      const y = ffnRow(site, sample.layers[k].X.data.subarray(t * s.D, (t + 1) * s.D));
      for (let d = 0; d < s.D; d++) assert.ok(Math.abs(y[d] - out[t * s.D + d]) < 1e-4 * (1 + Math.abs(out[t * s.D + d])), `layer ${k} token ${t} dim ${d}`);
    }
  });
});

test('capture: a token cap keeps a seeded, ordered subsample shared by all layers', async () => {
  const { model, s, sites } = open(SMALL);
  const full = await smallSample();
  const a = await capture(model, s, sites, { calib: SMALL_CALIB, synthSamples: 0, seed: 3, maxTokens: 500 });
  const b = await capture(model, s, sites, { calib: SMALL_CALIB, synthSamples: 0, seed: 3, maxTokens: 500 });
  assert.equal(a.layers[0].N, 500);
  assert.deepEqual(a.layers[0].X.data, b.layers[0].X.data);
  // Each kept row is a row of the full capture with the same scale, in the full capture's order.
  const D = s.D;
  let from = 0;
  for (let i = 0; i < 500; i++) {
    const row = a.layers[1].X.data.subarray(i * D, (i + 1) * D);
    let j = from;
    while (j < full.layers[1].N && full.layers[1].X.data[j * D] !== row[0]) j++;
    assert.ok(j < full.layers[1].N, `row ${i} is not in the full capture after row ${from}`);
    assert.deepEqual(full.layers[1].X.data.subarray(j * D, (j + 1) * D), row);
    assert.equal(a.layers[1].scaleOfToken[i], full.layers[1].scaleOfToken[j]);
    from = j + 1;
  }
});

test('capture batches slice a CFG-doubled KV cache by blocks (B conditional rows, then B unconditional)', async () => {
  // Rows labelled by their index: samples 1…2 of 3 are rows 1, 2 (conditional) and 4, 5 (unconditional).
  const kv = new ort.Tensor('float32', Float32Array.from({ length: 6 * 2 }, (_, i) => Math.floor(i / 2)), [6, 2]);
  const label = new ort.Tensor('int64', BigInt64Array.of(7n, 8n, 9n), [3]);
  const part = sliceFeeds({ past_key_0: kv, label_B: label }, 1, 3, 2);
  assert.deepEqual(Array.from(part.past_key_0.data as Float32Array), [1, 1, 2, 2, 4, 4, 5, 5]);
  assert.deepEqual(Array.from(part.label_B.data as BigInt64Array), [8n, 9n]);
  // A real step graph run on a slice of its generated inputs gives those samples' logits.
  const dir = tmpDir('kv-slice');
  try {
    await generate({ steps: GELU_STEPS, vq: GELU_STEPS, samples: 3, cfg: 2, topK: 50, topP: 0.96, seed: 0, dumpCalib: dir });
    const feeds = (await readTensorSet(path.join(dir, 's8'))) as unknown as Record<string, ort.Tensor>;
    const sess = await ort.InferenceSession.create(path.join(GELU_STEPS, 'var_step_s8.onnx'));
    const full = (await sess.run(feeds)).logits_BlV;
    const sliced = (await sess.run(sliceFeeds(feeds, 1, 3, 2))).logits_BlV;
    await sess.release();
    const per = full.data.length / 3;
    const want = (full.data as Float32Array).subarray(per, 3 * per), got = sliced.data as Float32Array;
    assert.equal(got.length, want.length);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    assert.ok(worst <= 1e-4, `logits of samples 1…2 differ by ${worst} when run on a slice`);
  } finally {
    rmDir(dir);
  }
});

test('cluster → ExpertClustering: equal contiguous experts, a permutation, seeded', async () => {
  const { sites } = open(SMALL);
  const sample = await smallSample();
  const acts = sites.map(() => 'relu' as const);
  for (const clusterBy of ['weights', 'activations'] as const) {
    const c = await cluster(sites, acts, sample, { experts: 8, clusterBy, seed: 1 });
    const again = await cluster(sites, acts, sample, { experts: 8, clusterBy, seed: 1 });
    assert.equal(c.layouts.length, sites.length);
    c.layouts.forEach((l, k) => {
      const H = sites[k].H;
      assert.equal(l.experts * l.expertSize, H);
      assert.deepEqual([...l.order].sort((x, y) => x - y), Array.from({ length: H }, (_, i) => i), 'order is a permutation');
      for (let j = 0; j < H; j++) assert.equal(l.labels[l.order[j]], Math.floor(j / l.expertSize), 'expert e owns positions e·S…');
      assert.deepEqual(l.order, again.layouts[k].order);
      const conc = c.concentration[k];
      assert.ok(conc !== null && conc > 0 && conc <= 1, `concentration ${conc}`);
    });
  }
});

test('permute → ExpertWeights: the permuted FFN computes the same function', async () => {
  const { sites } = open(SMALL);
  const sample = await smallSample();
  const acts = sites.map(() => 'relu' as const);
  const c = await cluster(sites, acts, sample, { experts: 4, clusterBy: 'weights', seed: 0 });
  const w = permute(sites, c, acts);
  const site = sites[0], D = site.D, H = site.H;
  const x = sample.layers[0].X.data.subarray(100 * D, 101 * D);
  const want = ffnRow(site, x);
  const got = new Float64Array(D);
  for (let j = 0; j < H; j++) {
    let a = w[0].B1[j];
    for (let d = 0; d < D; d++) a += x[d] * w[0].W1[d * H + j];
    const h = activate(a, 'relu');
    for (let d = 0; d < D; d++) got[d] += h * w[0].W2[j * D + d];
  }
  for (let d = 0; d < D; d++) got[d] += w[0].B2 ? w[0].B2[d] : 0;
  for (let d = 0; d < D; d++) assert.ok(Math.abs(got[d] - want[d]) < 1e-4, `dim ${d}: ${got[d]} vs ${want[d]}`);
  assert.deepEqual(Array.from(w[0].B1), Array.from(c.layouts[0].order, (i) => fc1Weights(site).B1[i]));
});

test('trainRouters → RouterSet: targets are the true expert norms; √norm routers square back', async () => {
  const { sites } = open(SMALL);
  const full = await smallSample();
  // 600 tokens of scale 10 per layer keep training quick.
  const sample: FfnInputSample = { ...full, layers: full.layers.map((l) => ({ ...l, X: new Lendable(l.X.data.slice(80 * l.D, 680 * l.D)), N: 600, scaleOfToken: l.scaleOfToken.slice(80, 680) })) };
  const acts = sites.map(() => 'relu' as const);
  const w = permute(sites, await cluster(sites, acts, sample, { experts: 4, clusterBy: 'weights', seed: 0 }), acts);
  for (const routerTarget of ['sqrt', 'norm'] as const) {
    const r = await trainRouters(sample, w, { experts: 4, routerWidth: 16, routerEpochs: 2, routerTarget, seed: 0 });
    assert.equal(r.routers.length, sites.length);
    r.routers.forEach((x, k) => {
      assert.equal(x.squared, routerTarget === 'sqrt');
      assert.equal(x.W1.length, 64 * 16);
      assert.equal(x.W2.length, 16 * 4);
      const c = sample.layers[k];
      const ref = expertNormsReference(c.X.data.subarray(0, 20 * c.D), 20, c.D, w[k].W1, w[k].B1, w[k].W2, 4, 'relu');
      for (let i = 0; i < ref.length; i++) assert.ok(Math.abs(r.norms[k].trueNorms[i] - ref[i]) < 1e-3 * (1 + ref[i]), `true norm ${i}`);
      assert.equal(r.norms[k].predicted.length, 600 * 4);
      assert.ok(r.norms[k].predicted.every((p) => p >= 0));
    });
  }
});

test('normaliseRouters (the absolute rule\'s): norms in units of the layer\'s RMS expert energy on the MoE scales, folded into the router', async () => {
  const { sites } = open(SMALL);
  const full = await smallSample();
  const acts = sites.map(() => 'relu' as const);
  const w = permute(sites, await cluster(sites, acts, full, { experts: 4, clusterBy: 'weights', seed: 0 }), acts);
  for (const routerTarget of ['sqrt', 'norm'] as const) {
    const set = await trainRouters(full, w, { experts: 4, routerWidth: 16, routerEpochs: 1, routerTarget, seed: 0 });
    const fromScale = 9;
    const n = await normaliseRouters(set, full, fromScale);
    n.routers.forEach((r, k) => {
      const c = full.layers[k];
      // Reference: the factor from the true norms of the tokens of scales 9–10, by a plain loop.
      let sum = 0, cnt = 0;
      for (let t = 0; t < c.N; t++) {
        if (c.scaleOfToken[t] < fromScale - 1) continue;
        cnt++;
        for (let e = 0; e < 4; e++) sum += set.norms[k].trueNorms[t * 4 + e] ** 2;
      }
      assert.ok(cnt > 0);
      const f = 1 / Math.sqrt(sum / cnt);
      assert.ok(Math.abs(f - 1) > 0.05, `the factor is not trivially 1 (${f})`);
      for (let i = 0; i < 200; i++) assert.ok(Math.abs(n.norms[k].trueNorms[i] - f * set.norms[k].trueNorms[i]) <= 1e-5 * (1 + n.norms[k].trueNorms[i]));
      // The emitted router's norms (its TypeScript reference on the new weights) are f times the old router's, and
      // are the predictions the thresholds are chosen on.
      const before = routerNorms(set.routers[k]), after = routerNorms(r);
      for (let t = 0; t < 50; t++) {
        const b = Float32Array.from(before(c.X.data, t)), a = after(c.X.data, t);
        for (let e = 0; e < 4; e++) {
          assert.ok(Math.abs(a[e] - f * b[e]) <= 1e-4 * (1e-3 + f * b[e]), `token ${t} expert ${e}: ${a[e]} vs ${f * b[e]}`);
          assert.ok(Math.abs(n.norms[k].predicted[t * 4 + e] - a[e]) <= 1e-4 * (1e-3 + a[e]), `prediction ${t},${e}`);
        }
      }
      // The relative and top-k rules compare a token's norms with each other: the normalisation changes nothing there.
      for (const rule of ['relative', 'topk'] as const) {
        const m0 = routeTokens(set.norms[k].predicted, c.N, 4, rule, 0.4).mask, m1 = routeTokens(n.norms[k].predicted, c.N, 4, rule, 0.4).mask;
        let diff = 0;
        for (let i = 0; i < m0.length; i++) diff += m0[i] !== m1[i] ? 1 : 0;
        assert.ok(diff <= 2, `${rule}: ${diff} routing decisions changed`);
      }
    });
  }
});

/** A sample whose tokens all belong to scale `s` (0-based) with given predicted norms [N, E], one layer. */
function synthetic(norms: number[][], scales: number[]): { sample: FfnInputSample; routers: RouterSet } {
  const p = Float32Array.from(norms.flat());
  return {
    sample: { layers: [{ X: new Lendable(new Float32Array(norms.length)), N: norms.length, D: 1, scaleOfToken: Int32Array.from(scales) }], samples: 1, source: 'calibration' },
    routers: { routers: [], norms: [{ trueNorms: p, predicted: p }] },
  };
}

test('chooseThresholds → ThresholdPlan: given, τ and budget thresholds; active fractions counted as the op routes', () => {
  const layout = analyseVar(loadModel(fixture('var_tiny_full.onnx'))).layout;
  // Scale 9 (index 8): norms relative to the max 1, .6, .3, .1; scale 10: 1, .8, .7, .05.
  const { sample, routers } = synthetic([[1, 0.6, 0.3, 0.1], [0.1, 1, 0.6, 0.3], [1, 0.8, 0.7, 0.05]], [8, 8, 9]);
  const given = chooseThresholds(layout, sample, routers, { experts: 4, fromScale: 9, thresholds: [0.5], budget: null, routing: 'relative' });
  assert.deepEqual(given.thresholds, [0, 0, 0, 0, 0, 0, 0, 0, 0.5, 0.5]);
  // norms >= 0.5 · max: two of four on scale 9, three on scale 10; dense scales run everything.
  assert.deepEqual(given.activeFractions.slice(0, 8), Array(8).fill(1));
  assert.equal(given.activeFractions[8], 0.5);
  assert.equal(given.activeFractions[9], 0.75);
  assert.deepEqual(given.activeFractionPerLayer, [{ 9: 0.5, 10: 0.75 }]);
  const tau = chooseThresholds(layout, sample, routers, { experts: 4, fromScale: 9, tau: [0.75, 0.2], budget: null, routing: 'relative' });
  assert.deepEqual(tau.thresholds.slice(8).map((t) => +t.toFixed(6)), [0.25, 0.8]);
  assert.equal(tau.activeFractions[8], 0.75);
  // A budget spends at most its share of the MoE scales' FFN FLOPs on this data, thresholds non-decreasing.
  const b = chooseThresholds(layout, sample, routers, { experts: 4, fromScale: 9, budget: 0.6, routing: 'relative' });
  const [t9, t10] = b.thresholds.slice(8);
  assert.ok(t9 <= t10, `non-decreasing: ${t9}, ${t10}`);
  const spent = (169 * b.activeFractions[8] + 256 * b.activeFractions[9]) / (169 + 256);
  assert.ok(spent <= 0.6 + 0.02, `spent ${spent}`);
});

test('relufy: the experts take ReLU (or keep the model\'s activation); relufied() is a copy whose FFNs compute with ReLU, the model stays as it was', async () => {
  const file = fixture('var_tiny_full.onnx');
  const { model, s, sites } = open(file);
  const before = Buffer.from(encodeModel(model));
  const copy = relufied(model, sites).model;
  assert.ok(Buffer.from(encodeModel(model)).equals(before), 'the model is unchanged');
  assert.deepEqual(analyseVar(copy).blocks.map((b) => b.ffn!.activation.kind), ['relu', 'relu']);
  const sample = await capture(model, s, sites, { synthSamples: 1, seed: 0, maxTokens: 300 });
  const facts = { D: s.D, patchNums: s.layout.patchNums, stepScale: null, ffns: sites.map((x) => ({ block: x.block, H: x.H, activation: x.activation.kind })) };
  for (const activation of ['relu', 'keep'] as const) {
    const recipe = resolveForModel({ experts: 4, fromScale: 9, activation, thresholds: [0.5] }, facts);
    const a = await relufyStage.run({ sites, sample, recipe }, () => {});
    assert.deepEqual(a.original, ['gelu_tanh', 'gelu_tanh']);
    assert.deepEqual(a.experts, activation === 'keep' ? a.original : ['relu', 'relu']);
    if (activation === 'keep') assert.deepEqual(a.change, [null, null]);
    // ‖FFN_relu(x) − FFN(x)‖/‖FFN(x)‖ (fc2 bias left out) on the captured rows, in plain TypeScript.
    else sites.forEach((site, k) => {
      const X = sample.layers[k].X.data, D = site.D;
      let num = 0, den = 0;
      for (let t = 0; t < sample.layers[k].N; t++) {
        const x = X.subarray(t * D, (t + 1) * D);
        const B2 = fc2Weights(site).B2 ?? new Float32Array(D);
        const [y0, y1] = (['gelu_tanh', 'relu'] as const).map((kind) => ffnRow(site, x, kind).map((v, d) => v - B2[d]));
        for (let d = 0; d < D; d++) {
          num += (y1[d] - y0[d]) ** 2;
          den += y0[d] ** 2;
        }
      }
      assert.ok(Math.abs(a.change[k]! - Math.sqrt(num / den)) < 1e-4, `layer ${k}: ${a.change[k]} vs ${Math.sqrt(num / den)}`);
    });
  }
});

test('stages are seeded: the same seed gives the same routers', async () => {
  const { sites } = open(SMALL);
  const full = await smallSample();
  const sample: FfnInputSample = { ...full, layers: full.layers.map((l) => ({ ...l, X: new Lendable(l.X.data.slice(0, 300 * l.D)), N: 300, scaleOfToken: l.scaleOfToken.slice(0, 300) })) };
  const acts = sites.map(() => 'relu' as const);
  const w = permute(sites, await cluster(sites, acts, sample, { experts: 4, clusterBy: 'weights', seed: 0 }), acts);
  const o = { experts: 4, routerWidth: 8, routerEpochs: 1, routerTarget: 'sqrt' as const, seed: 5 };
  const [a, b] = [await trainRouters(sample, w, o), await trainRouters(sample, w, o)];
  assert.deepEqual(a.routers[0].W1, b.routers[0].W1);
});
