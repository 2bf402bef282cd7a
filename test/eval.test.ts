// moefy eval (issue 6) on the tiny fixtures and the trained step graphs: a model against itself (KL 0, agreement 1,
// the dense FLOPs), a threshold-0 conversion (the same within float tolerance), the CLI's JSON, generation with the
// step graphs (identical seeds: a threshold-0 MoE step samples the dense tokens) and its image grid.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { PNG } from 'pngjs';
import { countFlops } from '../src/analysis/flops';
import { analyseVar } from '../src/analysis/var-structure';
import { generate } from '../src/eval/generate';
import { sampleTopKTopP } from '../src/eval/sampling';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';
import { readTensorSet } from '../src/io';
import { loadModel } from '../src/onnx/io';
import { convert } from '../src/pipeline';
import { fixture, GELU_STEPS, readIo, rmDir, runCli, tmpDir, TRAINED } from './helpers/fixtures';
import { FAST } from './helpers/fast';


function inputsOf(dir: string): Record<string, ort.Tensor> {
  const io = readIo(dir);
  return Object.fromEntries(Object.entries(io).map(([n, t]) => [n, new ort.Tensor(t.dtype as never, t.data as never, t.shape)]));
}

/** PNG signature, IHDR size, and a pngjs decode. */
function checkPng(file: string, width?: number, height?: number): { width: number; height: number } {
  const b = fs.readFileSync(file);
  assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${file}: PNG signature`);
  assert.equal(b.subarray(12, 16).toString('ascii'), 'IHDR');
  const w = b.readUInt32BE(16), h = b.readUInt32BE(20);
  if (width !== undefined) assert.equal(w, width, `${file}: width`);
  if (height !== undefined) assert.equal(h, height, `${file}: height`);
  const img = PNG.sync.read(b);
  assert.equal(img.width, w);
  assert.equal(img.height, h);
  return { width: w, height: h };
}

test('eval: a model against itself reports KL 0, agreement 1 and the dense FLOPs', async () => {
  const file = fixture('var_tiny_full.onnx');
  const a = await openSide(file);
  const b = await openSide(file);
  try {
    const r = (await evaluate(a, b, inputsOf(fixture('var_tiny_full_io')))).reports[0];
    const model = loadModel(file);
    const flops = countFlops(model, analyseVar(model), 1);
    assert.equal(r.samples, 2);
    assert.equal(r.scales.length, 10);
    for (const s of r.scales) {
      assert.ok(Math.abs(s.kl) < 1e-9, `scale ${s.scale}: KL ${s.kl}`);
      assert.equal(s.top1, 1);
      for (const e of s.ffnRelErr) assert.equal(e, 0);
      assert.equal(s.activeFraction, 1);
      assert.equal(s.moe, false);
      const f = flops.scales[s.scale - 1];
      assert.equal(s.ffnFlopsDense, f.flops.ffn);
      assert.equal(s.ffnFlopsMoe, f.flops.ffn);
      assert.equal(s.flopsDense, f.total);
      assert.equal(s.flopsMoe, f.total);
    }
    assert.equal(r.totals.ffnFlopsDense, flops.totals.ffn);
    assert.equal(r.totals.flopsMoe, flops.total);
    assert.equal(r.groundTruth, false);
    assert.equal(r.totals.ceIncrease, null);
  } finally {
    await closeSide(a);
    await closeSide(b);
  }
});

test('eval: a threshold-0 conversion matches the dense model within float tolerance; the CLI prints it as JSON', async () => {
  const dir = tmpDir('eval-thr0');
  try {
    const out = path.join(dir, 'tiny.moe.onnx');
    // The tiny model is GELU: keep the activation so that threshold 0 is the dense FFN exactly.
    await convert(fixture('var_tiny_full.onnx'), { ...FAST, activation: 'keep', experts: 8, fromScale: 8, thresholds: [0], output: out });
    const dense = await openSide(fixture('var_tiny_full.onnx'), { withFfnIn: true });
    const moe = await openSide(out);
    try {
      const r = (await evaluate(dense, moe, inputsOf(fixture('var_tiny_full_io')), { replayRouters: true, batch: 1 })).reports[0];
      for (const s of r.scales) {
        assert.ok(s.kl < 1e-6, `scale ${s.scale}: KL ${s.kl}`);
        assert.ok(s.top1 > 0.99, `scale ${s.scale}: top-1 ${s.top1}`);
        for (const e of s.ffnRelErr) assert.ok(e < 1e-4, `scale ${s.scale}: FFN relative error ${e}`);
        assert.equal(s.activeExperts, 8);
        assert.equal(s.activeFraction, 1);
        assert.equal(s.activeFractionDenseStream, 1);
        assert.equal(s.moe, s.scale >= 8);
        // Every scale of a converted model pays the routers on top of the dense FFN at threshold 0.
        assert.ok(s.ffnFlopsMoe > s.ffnFlopsDense && s.routerFlops > 0);
      }
    } finally {
      await closeSide(dense);
      await closeSide(moe);
    }
    const cli = runCli(['eval', fixture('var_tiny_full.onnx'), out, '--inputs', fixture('var_tiny_full_io'), '--json']);
    assert.equal(cli.status, 0, cli.stderr);
    const j = JSON.parse(cli.stdout);
    assert.equal(j.scales.length, 10);
    assert.ok(j.totals.kl < 1e-6);
    assert.deepEqual(j.moeScales.scales, [8, 9, 10]);
    const bad = runCli(['eval', out, fixture('var_tiny_full.onnx'), '--inputs', fixture('var_tiny_full_io')]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /converted model: give the dense model first/);
  } finally {
    rmDir(dir);
  }
});

test('eval: top-k/top-p sampling by inverse CDF', () => {
  const V = 6;
  const l = Float32Array.from([0, 5, 1, 4, -10, 3]);
  const order = new Int32Array(V), probs = new Float64Array(V);
  // u near 0 takes the most likely token, u near 1 the least likely one kept.
  assert.equal(sampleTopKTopP(l, 0, V, 900, 1, 0, order, probs), 1);
  assert.equal(sampleTopKTopP(l, 0, V, 2, 1, 0.999, order, probs), 3);
  // top-p 0.5: the top token alone holds 0.66 of the mass.
  assert.equal(sampleTopKTopP(l, 0, V, 900, 0.5, 0.999, order, probs), 1);
});

test('eval generate in batches: the report and the dumped calibration data do not depend on --batch', async () => {
  const dir = tmpDir('eval-gen-batch');
  try {
    const run = (batch: number) => generate({ steps: GELU_STEPS, vq: GELU_STEPS, samples: 3, cfg: 2, topK: 50, topP: 0.96, seed: 1, dumpCalib: path.join(dir, `b${batch}`), batch });
    const one = await run(3), two = await run(2);
    assert.deepStrictEqual(two, one);
    for (const sub of ['full', 's1', 's9']) {
      const a = path.join(dir, 'b3', sub), b = path.join(dir, 'b2', sub);
      assert.deepStrictEqual(fs.readdirSync(b).sort(), fs.readdirSync(a).sort());
      for (const f of fs.readdirSync(a)) assert.ok(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), `${sub}/${f} differs`);
    }
    // The last step's KV cache: 2 rows per sample (CFG), the conditional rows of all samples first.
    const s9 = await readTensorSet(path.join(dir, 'b2', 's9'));
    assert.deepStrictEqual([...s9.past_key_0.dims], [6, 4, 424, 32]);
  } finally {
    rmDir(dir);
  }
});

test('eval --generate: a threshold-0 MoE step graph samples the dense tokens with identical seeds; images decode', async () => {
  const dir = tmpDir('eval-gen');
  try {
    const moeDir = path.join(dir, 'moe');
    fs.mkdirSync(moeDir);
    await convert(path.join(GELU_STEPS, 'var_step_s9.onnx'), { ...FAST, activation: 'keep', experts: 8, fromScale: 10, thresholds: [0], output: path.join(moeDir, 'var_step_s9.moe.onnx') });
    const images = path.join(dir, 'gen.png');
    const dump = path.join(dir, 'stepcal');
    const r = await generate({ steps: GELU_STEPS, moeSteps: moeDir, vq: GELU_STEPS, decoder: path.join(GELU_STEPS, 'vqvae_decoder.onnx'), images, samples: 2, cfg: 2, topK: 900, topP: 0.96, seed: 0, dumpCalib: dump });
    // The dumped step inputs of the last scale: the dense chain's x_next and KV cache of 424 earlier tokens.
    const cal = await readTensorSet(path.join(dump, 's9'));
    assert.deepEqual(cal.x_next_BlCv.dims, [2, 256, 32]);
    assert.deepEqual(cal.past_key_0.dims, [4, 4, 424, 32]);
    assert.deepEqual(cal.cfg.dims, []);
    // The whole sequences in the full graph's teacher-forcing format: x is the steps' inputs of scales 2…10 in
    // order, the tokens those the dense chain drew, and the trained full graph of the same model runs on them.
    const full = await readTensorSet(path.join(dump, 'full'));
    assert.deepEqual(full.x_BLCv_wo_first_l.dims, [2, 679, 32]);
    assert.deepEqual(full.gt_idx_BL.dims, [2, 680]);
    assert.deepEqual(Array.from(full.label_B.data as BigInt64Array, Number), [0, 1]);
    const x = full.x_BLCv_wo_first_l.data as Float32Array;
    let at = 0;
    for (let k = 1; k < 10; k++) {
      const step = (await readTensorSet(path.join(dump, `s${k}`))).x_next_BlCv;
      const n = step.dims[1], d = step.data as Float32Array;
      for (let b = 0; b < 2; b++)
        for (let i = 0; i < n * 32; i++) assert.equal(x[b * 679 * 32 + at * 32 + i], d[b * n * 32 + i], `scale ${k + 1}, sample ${b}`);
      at += n;
    }
    assert.equal(at, 679);
    const tf = await ort.InferenceSession.create(path.join(TRAINED, 'var_gelu_tf.onnx'));
    const lg = (await tf.run({ label_B: full.label_B as ort.Tensor, x_BLCv_wo_first_l: full.x_BLCv_wo_first_l as ort.Tensor })).logits;
    const V = lg.dims[2], ld = lg.data as Float32Array, gt = full.gt_idx_BL.data as BigInt64Array;
    let ce = 0;
    for (let r = 0; r < 2 * 680; r++) {
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, ld[r * V + v]);
      let z = 0;
      for (let v = 0; v < V; v++) z += Math.exp(ld[r * V + v] - m);
      ce += m + Math.log(z) - ld[r * V + Number(gt[r])];
    }
    // Tokens drawn from the model's own (guided) distribution: far likelier under it than a uniform guess (ln 512).
    assert.ok(ce / (2 * 680) < 0.75 * Math.log(V), `CE of the generated tokens ${ce / (2 * 680)}`);
    await tf.release();
    assert.equal(r.scales.length, 10);
    for (const s of r.scales) {
      assert.equal(s.moe, s.scale === 10);
      assert.equal(s.agreement, 1, `scale ${s.scale}`);
      assert.equal(s.agreementGivenContext, 1);
      assert.ok(s.klGivenContext < 1e-6);
      assert.ok(s.agreementChance > 0 && s.agreementChance <= 1);
    }
    assert.equal(r.scales[9].activeExperts, 8);
    // 2 rows (dense, MoE) of 2 images of 64×64 with 2 px gaps.
    checkPng(images, 2 * 64 + 3 * 2, 2 * 64 + 3 * 2);
  } finally {
    rmDir(dir);
  }
});
