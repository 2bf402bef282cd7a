// The main job (issue 3): exactness against ONNX Runtime running the (ReLUfied) dense model, determinism, and bad
// input handled with one line and no output file.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { analyseVar } from '../src/analysis/var-structure';
import { loadModel } from '../src/onnx/io';
import { convert } from '../src/pipeline';
import { inspectModel } from '../src/inspect';
import { relufied } from './helpers/relufied';
import { fixture, readIo, repoRoot, rmDir, runCli, tmpDir } from './helpers/fixtures';
import { FAST } from './helpers/fast';



function feedsOf(io: ReturnType<typeof readIo>, session: ort.InferenceSession): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const name of session.inputNames) {
    const t = io[name];
    if (!t) continue;
    feeds[name] = new ort.Tensor(t.dtype as never, t.data as never, t.shape);
  }
  return feeds;
}

async function logits(model: string | Uint8Array, io: ReturnType<typeof readIo>): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(model as never);
  const r = await s.run(feedsOf(io, s));
  const out = r[s.outputNames[0]].data as Float32Array;
  await s.release();
  return out;
}

function maxAbs(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const CASES: { model: string; io: string; experts: number }[] = [
  { model: 'var_tiny_full.onnx', io: 'var_tiny_full_io', experts: 8 },
  { model: 'var_tiny_full_static_b1.onnx', io: 'var_tiny_full_io', experts: 4 },
  { model: 'var_tiny_step.onnx', io: 'var_tiny_step_io', experts: 8 },
  { model: 'var_tiny_step0.onnx', io: 'var_tiny_step0_io', experts: 8 },
  { model: 'var_tiny_step_last_static.onnx', io: 'var_tiny_step_last_static_io', experts: 16 },
];

for (const c of CASES) {
  test(`threshold 0 on every scale equals the ReLUfied dense model: ${c.model}`, async () => {
    const dir = tmpDir('convert');
    try {
      const out = path.join(dir, 'm.moe.onnx');
      let io = readIo(fixture(c.io));
      if (c.model.includes('static_b1')) {
        // The static graph takes one sample: the first of the B = 2 vector.
        io = Object.fromEntries(Object.entries(io).map(([k, t]) => [k, { ...t, shape: [1, ...t.shape.slice(1)], data: (t.data as Float32Array).subarray(0, (t.data as Float32Array).length / 2) }])) as typeof io;
      }
      await convert(fixture(c.model), { ...FAST, experts: c.experts, fromScale: 1, thresholds: [0], output: out });
      const got = await logits(out, io);
      const want = await logits(relufied(fixture(c.model)), io);
      assert.ok(maxAbs(got, want) < 1e-4, `max abs ${maxAbs(got, want)}`);
      // Really converted: DynamicMoE nodes, no dense FFN left.
      const s = analyseVar(loadModel(out));
      assert.ok(s.blocks.every((b) => b.moe && !b.ffn));
    } finally {
      rmDir(dir);
    }
  });
}

test('--activation keep with threshold 0 equals the original model and the PyTorch reference', async () => {
  const dir = tmpDir('convert');
  try {
    const out = path.join(dir, 'keep.moe.onnx');
    await convert(fixture('var_tiny_full.onnx'), { ...FAST, activation: 'keep', experts: 8, fromScale: 1, thresholds: [0], output: out });
    const io = readIo(fixture('var_tiny_full_io'));
    const got = await logits(out, io);
    const orig = await logits(fixture('var_tiny_full.onnx'), io);
    assert.ok(maxAbs(got, orig) < 1e-4, `vs original ${maxAbs(got, orig)}`);
    assert.ok(maxAbs(got, io.logits_BLV.data as Float32Array) < 1e-4, 'vs the PyTorch reference logits');
    // ReLU would not match the GELU model: the comparison can fail.
    const relu = await logits(relufied(fixture('var_tiny_full.onnx')), io);
    assert.ok(maxAbs(relu, orig) > 1e-3);
  } finally {
    rmDir(dir);
  }
});

test('thresholds above 0 skip experts and change the logits, within reason', async () => {
  const dir = tmpDir('convert');
  try {
    const out = path.join(dir, 'm.moe.onnx');
    const r = await convert(fixture('var_tiny_full.onnx'), { ...FAST, experts: 8, fromScale: 8, thresholds: [0.5], output: out });
    assert.deepEqual(r.scales.map((s) => s.threshold), [0, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0.5]);
    const io = readIo(fixture('var_tiny_full_io'));
    const got = await logits(out, io);
    const want = await logits(relufied(fixture('var_tiny_full.onnx')), io);
    // Scales 1-7 (tokens 0..154) are exact; later ones differ.
    const V = 4096;
    let early = 0, late = 0;
    for (let b = 0; b < 2; b++) for (let t = 0; t < 680; t++) for (let v = 0; v < V; v += 7) {
      const i = (b * 680 + t) * V + v;
      const d = Math.abs(got[i] - want[i]);
      if (t < 155) early = Math.max(early, d);
      else late = Math.max(late, d);
    }
    assert.ok(early < 1e-4, `early scales ${early}`);
    assert.ok(late > 1e-5, `late scales unchanged (${late})`);
  } finally {
    rmDir(dir);
  }
});

test('two runs with the same seed give byte-identical files', async () => {
  const dir = tmpDir('convert');
  try {
    const a = path.join(dir, 'a.moe.onnx'), b = path.join(dir, 'b.moe.onnx');
    const calib = path.join(repoRoot, 'fixtures', 'small-var-calib');
    for (const out of [a, b]) await convert(path.join(repoRoot, 'fixtures', 'small-var.onnx'), { ...FAST, experts: 4, fromScale: 8, calib, output: out });
    assert.ok(fs.readFileSync(a).equals(fs.readFileSync(b)), 'models differ');
    const ja = fs.readFileSync(a.replace(/\.onnx$/, '.json'), 'utf8').replace(/a\.moe/g, 'X');
    const jb = fs.readFileSync(b.replace(/\.onnx$/, '.json'), 'utf8').replace(/b\.moe/g, 'X');
    assert.equal(ja, jb);
  } finally {
    rmDir(dir);
  }
});

test('bad input: one clear line, non-zero exit, no output file left', () => {
  const dir = tmpDir('convert-bad');
  try {
    const model = path.join(repoRoot, 'fixtures', 'small-var.onnx');
    const out = path.join(dir, 'out.onnx');
    const badCalib = path.join(dir, 'calib');
    fs.mkdirSync(badCalib);
    fs.writeFileSync(path.join(badCalib, 'manifest.json'), JSON.stringify({ wrong_name: { file: 'w.bin', dtype: 'float32', shape: [2] } }));
    fs.writeFileSync(path.join(badCalib, 'w.bin'), Buffer.alloc(8));
    // Right names, wrong shape: x with 100 tokens instead of 679.
    const badShape = path.join(dir, 'calib2');
    fs.mkdirSync(badShape);
    fs.writeFileSync(path.join(badShape, 'manifest.json'), JSON.stringify({
      label_B: { file: 'l.bin', dtype: 'int64', shape: [1] },
      x_BLCv_wo_first_l: { file: 'x.bin', dtype: 'float32', shape: [1, 100, 32] },
    }));
    fs.writeFileSync(path.join(badShape, 'l.bin'), Buffer.alloc(8));
    fs.writeFileSync(path.join(badShape, 'x.bin'), Buffer.alloc(100 * 32 * 4));
    const cases: [string[], RegExp][] = [
      [[model, '--experts', '3', '--from-scale', '8'], /does not divide/],
      [[model, '--experts', '4', '--from-scale', '11'], /from-scale 11 is out of range/],
      [[model, '--experts', '4', '--from-scale', '0'], /from-scale 0 is out of range/],
      [[model, '--experts', '4', '--from-scale', '8', '--threshold', '0.2,1.5,0.3'], /outside \[0, 1\]/],
      [[model, '--experts', '4', '--from-scale', '8', '--threshold', '0.2,0.3'], /need 3/],
      [[model, '--experts', '4', '--from-scale', '8', '--calib', badCalib], /no tensor named/],
      [[model, '--experts', '4', '--from-scale', '8', '--calib', badShape], /'x_BLCv_wo_first_l' has shape \[1, 100, 32\], the model expects/],
      [[fixture('trained', 'gelu_steps', 'vqvae_decoder.onnx'), '--experts', '4', '--from-scale', '8'], /not a VAR/],
      [[fixture('var_tiny_step0.onnx'), '--experts', '4', '--from-scale', '8'], /computes scale 1, before --from-scale 8/],
      [[model, '--experts', '4', '--from-scale', '8', '--threshold', '0.2', '-o', path.join(dir, 'no', 'such', 'out.onnx')], /does not exist/],
    ];
    for (const [args, want] of cases) {
      const r = runCli(args.includes('-o') ? args : [...args, '-o', out]);
      assert.notEqual(r.status, 0, args.join(' '));
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(lines[0], want);
      assert.ok(!fs.existsSync(out) && fs.readdirSync(dir).filter((f) => f !== 'calib' && f !== 'calib2').length === 0, `output left behind for ${args.join(' ')}`);
    }
  } finally {
    rmDir(dir);
  }
});

test('step graphs: full-sequence calibration data runs through a KV-cache chain (--kv-prefix)', async () => {
  const dir = tmpDir('convert-chain');
  try {
    const out = path.join(dir, 'step.moe.onnx');
    const r = await convert(fixture('var_tiny_step.onnx'), { ...FAST, experts: 8, fromScale: 8, calib: fixture('var_tiny_full_io'), kvPrefix: [fixture('var_tiny_step0.onnx')], output: out });
    const cap = r.passes.find((p) => p.name === 'capture')!.summary;
    assert.match(cap, /scales 2…10/);
    // Every MoE scale had calibration tokens, so each has a measured active fraction.
    for (const s of r.scales.filter((x) => x.moe)) assert.ok(s.activeFraction !== null && s.activeFraction > 0 && s.activeFraction <= 1, `scale ${s.scale}`);
    // Without the prefix the dynamic step graph cannot get scale 1's cache: one clear error.
    await assert.rejects(
      convert(fixture('var_tiny_step.onnx'), { ...FAST, experts: 8, fromScale: 8, calib: fixture('var_tiny_full_io'), output: path.join(dir, 'x.onnx') }),
      /needs the KV cache of scale 1: pass --kv-prefix/,
    );
    assert.ok(!fs.existsSync(path.join(dir, 'x.onnx')));
  } finally {
    rmDir(dir);
  }
});

test('inspect of a converted model: experts, routers, thresholds and expected FFN FLOPs as in the conversion report', async () => {
  const dir = tmpDir('convert-inspect');
  try {
    const out = path.join(dir, 'm.moe.onnx');
    const calib = path.join(repoRoot, 'fixtures', 'small-var-calib');
    const r = await convert(path.join(repoRoot, 'fixtures', 'small-var.onnx'), { ...FAST, experts: 4, fromScale: 8, calib, budget: 0.6, output: out });
    const i = inspectModel(loadModel(out), out);
    assert.ok(i.moe);
    assert.equal(i.moe.experts, 4);
    assert.equal(i.moe.expertSize, 64);
    assert.equal(i.moe.routerWidth, FAST.routerWidth);
    assert.equal(i.moe.fromScale, 8);
    // Router parameters: per block D·width + width·E, no biases.
    assert.equal(i.moe.routerParams, 2 * (64 * FAST.routerWidth + FAST.routerWidth * 4));
    r.scales.forEach((s, k) => {
      assert.ok(Math.abs(i.moe!.thresholds[k] - s.threshold) < 1e-7, `threshold of scale ${s.scale}`);
      const e = i.moe!.expected![k];
      // The metadata rounds the active fraction to 3 decimals.
      assert.ok(Math.abs(e.ffnFlopsMoe - s.ffnFlopsMoe) <= 1e-3 * s.ffnFlopsDense, `scale ${s.scale}: ${e.ffnFlopsMoe} vs ${s.ffnFlopsMoe}`);
    });
    assert.ok(i.blocks.every((b) => b.moe && b.moe.experts === 4));
  } finally {
    rmDir(dir);
  }
});
