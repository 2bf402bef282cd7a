import { test } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  ActivationStyle,
  generateInputs,
  generateVar,
  generateVarD16Like,
  LayerNormStyle,
  LinearStyle,
  SMALL_VAR_CALIB,
  SMALL_VAR_OPTIONS,
  VarGenOptions,
} from '../fixtures/generate';
import { analyseVar } from '../src/analysis/var-structure';
import { encodeModel, loadModel } from '../src/onnx/io';
import { readTensorSet } from '../src/io';

const PN = [1, 2, 3];
const TINY: VarGenOptions = { depth: 2, width: 64, ffnHidden: 256, vocab: 96, numClasses: 10, patchNums: PN, seed: 7 };
const ACTS: ActivationStyle[] = ['gelu_tanh_decomposed', 'gelu_op_tanh', 'gelu_op', 'gelu_erf_decomposed', 'relu'];
const LNS: LayerNormStyle[] = ['op', 'decomposed'];
const LINS: LinearStyle[] = ['matmul', 'gemm'];
const KIND_OF_ACT: Record<ActivationStyle, string> = {
  gelu_tanh_decomposed: 'gelu_tanh',
  gelu_op_tanh: 'gelu_tanh',
  gelu_op: 'gelu',
  gelu_erf_decomposed: 'gelu',
  relu: 'relu',
};
const ROOT = path.resolve(__dirname, '..', '..');

async function run(opts: VarGenOptions, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const s = await ort.InferenceSession.create(encodeModel(generateVar(opts)));
  try {
    return (await s.run(feeds)) as Record<string, ort.Tensor>;
  } finally {
    await s.release();
  }
}

function maxAbsDiff(a: ort.Tensor, b: ort.Tensor): number {
  assert.deepStrictEqual([...a.dims], [...b.dims]);
  const x = a.data as Float32Array, y = b.data as Float32Array;
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  return m;
}

function assertFinite(t: ort.Tensor, what: string): void {
  const d = t.data as Float32Array;
  for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) assert.fail(`${what}: non-finite value at ${i}`);
}

for (const kind of ['full', 'step'] as const) {
  test(`fixtures generator: every style of the ${kind} graph is recognised, runs, and computes the same logits`, async () => {
    const B = 2;
    const feeds = generateInputs({ ...TINY, kind }, B, 3);
    const l = kind === 'full' ? 14 : 4;
    const logitsName = kind === 'full' ? 'logits_BLV' : 'logits_BlV';
    // The same seed draws the same weights in every style, so every style with the same activation function must
    // give the same logits (MatMul vs Gemm, LN op vs decomposed, Gelu op vs its decomposition).
    const reference = new Map<string, ort.Tensor>();
    for (const linear of LINS) {
      for (const layerNorm of LNS) {
        for (const activation of ACTS) {
          const opts: VarGenOptions = { ...TINY, kind, linear, layerNorm, activation };
          const tag = `${kind}/${linear}/${layerNorm}/${activation}`;
          const model = generateVar(opts);
          const a = analyseVar(model, { patchNums: PN });
          assert.strictEqual(a.kind, 'step' === kind ? 'step' : 'full', tag);
          assert.strictEqual(a.blocks.length, 2, tag);
          assert.strictEqual(a.D, 64, tag);
          assert.strictEqual(a.H, 256, tag);
          assert.strictEqual(a.vocab, 96, tag);
          assert.strictEqual(a.rowsPerSample, kind === 'step' ? 2 : 1, tag);
          for (const blk of a.blocks) {
            assert.strictEqual(blk.ffn?.activation.kind, KIND_OF_ACT[activation], tag);
            assert.ok(blk.ffn, tag);
            if (linear === 'matmul') assert.ok(blk.ffn.gate, `${tag}: gate Mul after fc2`);
          }
          const out = await run(opts, feeds);
          const logits = out[logitsName];
          assert.deepStrictEqual([...logits.dims], [kind === 'full' ? B : 2 * B, l, 96], tag);
          assertFinite(logits, tag);
          if (kind === 'step') {
            assert.deepStrictEqual([...out.present_key_1.dims], [2 * B, 1, 1 + 4, 64], tag);
            assertFinite(out.present_value_0, tag);
          }
          const fn = activation === 'relu' ? 'relu' : KIND_OF_ACT[activation];
          const ref = reference.get(fn);
          if (!ref) reference.set(fn, logits);
          else assert.ok(maxAbsDiff(ref, logits) < 2e-4, `${tag}: logits differ from the first style with the same activation by ${maxAbsDiff(ref, logits)}`);
        }
      }
    }
    // Logits are O(1), and the activations really differ (a wrong rewrite of the FFN would show).
    const r = reference.get('relu')!.data as Float32Array;
    const rms = Math.sqrt(r.reduce((s, v) => s + v * v, 0) / r.length);
    assert.ok(rms > 0.2 && rms < 10, `logit rms ${rms}`);
    assert.ok(maxAbsDiff(reference.get('relu')!, reference.get('gelu_tanh')!) > 1e-2, 'relu and gelu models give visibly different logits');
  });
}

test('fixtures generator: the FFN gate matters (zeroing fc2 changes the logits visibly)', async () => {
  const opts: VarGenOptions = { ...TINY, activation: 'relu' };
  const feeds = generateInputs(opts, 1, 3);
  const model = generateVar(opts);
  const base = await ort.InferenceSession.create(encodeModel(model));
  const a = (await base.run(feeds)).logits_BLV;
  const st = analyseVar(model, { patchNums: PN });
  for (const blk of st.blocks) blk.ffn!.fc2.weight.tensor!.floats().fill(0);
  const cut = await ort.InferenceSession.create(encodeModel(model));
  const b = (await cut.run(feeds)).logits_BLV;
  assert.ok(maxAbsDiff(a, b) > 0.1, `dropping the FFNs moves the logits by only ${maxAbsDiff(a, b)}`);
});

test('fixtures generator: same options give identical bytes; another seed gives other weights', () => {
  for (const kind of ['full', 'step', 'step0'] as const) {
    const o: VarGenOptions = { ...TINY, kind, linear: 'gemm', layerNorm: 'decomposed' };
    const a = encodeModel(generateVar(o));
    const b = encodeModel(generateVar(o));
    assert.ok(Buffer.from(a).equals(Buffer.from(b)), `${kind}: not deterministic`);
    const c = encodeModel(generateVar({ ...o, seed: 8 }));
    assert.ok(!Buffer.from(a).equals(Buffer.from(c)), `${kind}: the seed does not change the weights`);
  }
});

test('fixtures generator: opsets and IR versions follow the styles; bad combinations are refused', () => {
  assert.strictEqual(generateVar({ ...TINY, layerNorm: 'decomposed' }).opset(), 14);
  assert.strictEqual(generateVar({ ...TINY, layerNorm: 'decomposed' }).irVersion, 7);
  assert.strictEqual(generateVar({ ...TINY }).opset(), 17);
  assert.strictEqual(generateVar({ ...TINY, activation: 'gelu_op_tanh' }).opset(), 20);
  assert.strictEqual(generateVar({ ...TINY, activation: 'gelu_op_tanh' }).irVersion, 9);
  assert.throws(() => generateVar({ ...TINY, activation: 'gelu_op', opset: 17 }), /opset >= 20/);
  assert.throws(() => generateVar({ ...TINY, layerNorm: 'op', opset: 14 }), /opset >= 17/);
  assert.throws(() => generateVar({ ...TINY, width: 64, heads: 3 }), /divisible/);
  // Real exports: one shared SiLU, the decomposed tanh-GELU has 9 nodes in torch's order, bias first in the Add.
  const m = generateVar({ ...TINY, activation: 'gelu_tanh_decomposed' });
  assert.strictEqual(m.graph.nodes.filter((n) => n.opType === 'Sigmoid').length, 1);
  const st = analyseVar(m, { patchNums: PN });
  const ffn = st.blocks[0].ffn!;
  assert.deepStrictEqual(ffn.activation.nodes.map((n) => n.opType).sort(), ['Add', 'Add', 'Mul', 'Mul', 'Mul', 'Mul', 'Mul', 'Mul', 'Tanh'].sort());
  assert.strictEqual(ffn.fc1.biasNode!.inputs[0], ffn.fc1.bias);
  assert.deepStrictEqual(ffn.fc1.weight.tensor!.dims, [64, 256]);
  const mask = m.graph.initializers.find((v) => v.tensor!.dims.length === 4)!;
  assert.deepStrictEqual(mask.tensor!.dims, [1, 1, 14, 14]);
  const md = mask.tensor!.floats();
  assert.strictEqual(md[0 * 14 + 1], -Infinity); // token 0 (scale 0) does not see scale 1
  assert.strictEqual(md[4 * 14 + 1], 0); // token 4 (scale 1) sees token 1 (scale 1)
});

test('fixtures generator: step0 then step graphs over the scales reproduce the full graph (cond half)', async () => {
  const style: VarGenOptions = { ...TINY, activation: 'gelu_tanh_decomposed', patchNums: [1, 2, 3, 4] };
  const B = 2;
  const fullFeeds = generateInputs({ ...style, kind: 'full' }, B, 11);
  const full = (await run({ ...style, kind: 'full' }, fullFeeds)).logits_BLV;
  const L = 30, V = 96, Cv = 32;
  const x = fullFeeds.x_BLCv_wo_first_l.data as Float32Array;
  const compare = (logits: ort.Tensor, off: number, l: number, what: string) => {
    const d = logits.data as Float32Array, f = full.data as Float32Array;
    let m = 0;
    for (let b = 0; b < B; b++) for (let t = 0; t < l; t++) for (let v = 0; v < V; v++) m = Math.max(m, Math.abs(d[(b * l + t) * V + v] - f[(b * L + off + t) * V + v]));
    assert.ok(m < 1e-4, `${what}: step logits differ from the full graph by ${m}`);
  };
  let out = await run({ ...style, kind: 'step0' }, { label_B: fullFeeds.label_B });
  compare(out.logits_BlV, 0, 1, 'scale 0');
  const stepSession = await ort.InferenceSession.create(encodeModel(generateVar({ ...style, kind: 'step' })));
  let off = 1;
  for (const pn of [2, 3, 4]) {
    const l = pn * pn;
    const xs = new Float32Array(B * l * Cv);
    for (let b = 0; b < B; b++) xs.set(x.subarray((b * (L - 1) + off - 1) * Cv, (b * (L - 1) + off - 1 + l) * Cv), b * l * Cv);
    const feeds: Record<string, ort.Tensor> = { label_B: fullFeeds.label_B, x_BlCv: new ort.Tensor('float32', xs, [B, l, Cv]) };
    for (let i = 0; i < 2; i++) {
      feeds[`past_key_${i}`] = out[`present_key_${i}`];
      feeds[`past_value_${i}`] = out[`present_value_${i}`];
    }
    out = (await stepSession.run(feeds)) as Record<string, ort.Tensor>;
    compare(out.logits_BlV, off, l, `scale ${pn}`);
    off += l;
  }
  await stepSession.release();
});

test('fixtures generator: gemm_each style runs and matches (not recognised by analyseVar: Reshape between fc1 and the activation)', async () => {
  const o: VarGenOptions = { ...TINY, activation: 'relu' };
  const feeds = generateInputs(o, 1, 3);
  const a = (await run(o, feeds)).logits_BLV;
  const b = (await run({ ...o, linear: 'gemm_each' }, feeds)).logits_BLV;
  assert.ok(maxAbsDiff(a, b) < 2e-4);
});

test('fixtures generator: d16-like last-scale step graph has static shapes (small stand-in sizes)', () => {
  const m = generateVarD16Like({ depth: 2, width: 128, heads: 2, ffnHidden: 512, vocab: 256, numClasses: 10, lastScaleStep: true });
  const st = analyseVar(m);
  assert.strictEqual(st.kind, 'step');
  assert.strictEqual(st.stepScale, 10);
  assert.strictEqual(st.rowsPerSample, 2);
  assert.deepStrictEqual(m.graph.value('x_BlCv').shape(), [1, 256, 32]);
  assert.deepStrictEqual(m.graph.value('past_key_0').shape(), [2, 2, 424, 64]);
  assert.deepStrictEqual(m.graph.value('present_value_1').shape(), [2, 2, 680, 64]);
});

test('fixtures: committed small-var.onnx and its calibration set are up to date and valid', async () => {
  const file = path.join(ROOT, 'fixtures', 'small-var.onnx');
  const bytes = fs.readFileSync(file);
  assert.ok(bytes.length < 1.5e6, `small-var.onnx is ${bytes.length} bytes`);
  assert.ok(Buffer.from(encodeModel(generateVar(SMALL_VAR_OPTIONS))).equals(bytes), 'fixtures/small-var.onnx differs from generateVar(SMALL_VAR_OPTIONS): regenerate with `node dist/fixtures/generate.js --small-var`');
  const st = analyseVar(loadModel(file));
  assert.strictEqual(st.kind, 'full');
  assert.strictEqual(st.layout.L, 680);
  assert.strictEqual(st.blocks.length, 2);
  assert.strictEqual(st.blocks[0].ffn!.activation.kind, 'relu');
  const calib = await readTensorSet(path.join(ROOT, 'fixtures', 'small-var-calib'));
  assert.deepStrictEqual([...calib.label_B.dims], [SMALL_VAR_CALIB.n]);
  assert.deepStrictEqual([...calib.x_BLCv_wo_first_l.dims], [SMALL_VAR_CALIB.n, 679, 32]);
  const s = await ort.InferenceSession.create(bytes);
  const out = await s.run({ label_B: calib.label_B, x_BLCv_wo_first_l: calib.x_BLCv_wo_first_l } as Record<string, ort.Tensor>);
  assert.deepStrictEqual([...out.logits_BLV.dims], [8, 680, 512]);
  assertFinite(out.logits_BLV, 'small-var');
  await s.release();
});

test('fixtures generator: a block has the op sequence of the real PyTorch export (Constants aside)', (t) => {
  const shared = '/work/shared/fixtures';
  if (!fs.existsSync(path.join(shared, 'var_tiny_full.onnx'))) return t.skip('real exports not available');
  for (const [file, kind] of [['var_tiny_full.onnx', 'full'], ['var_tiny_step.onnx', 'step']] as const) {
    const real = loadModel(path.join(shared, file));
    const ours = generateVar({ kind, depth: 2, width: 64, heads: 4, vocab: 4096 });
    const ops = (m: typeof real) => m.graph.nodes.filter((n) => n.name.startsWith('/blocks.1/') && n.opType !== 'Constant').map((n) => n.opType);
    assert.deepStrictEqual(ops(ours), ops(real), file);
    assert.strictEqual(ours.graph.initializers.length, real.graph.initializers.length, `${file}: initializer count`);
  }
});
