// The dynamo exporter's graphs (torch 2.5-2.8: run-time Transpose of [out, in] weights, opset 18, the Pow GELU chain;
// torch >= 2.9: folded weights, opset 20, Gelu; torch 2.14 below opset 20: x·(0.5·(1+tanh))), with name-scope
// metadata instead of module-path node names, one SiLU per block and dead nodes, and half-precision models
// (model.half() throughout, and float16 MatMuls with float32 LayerNorms between Casts). For each style: `inspect
// --json` reports what the generator was asked to write; conversion at threshold 0 reproduces ONNX Runtime running
// the original (float32: 1e-4 absolute; float16: at most twice ORT's own float16-vs-float32 error of the original,
// both measured against the original's float32 twin); `moefy run` of the result gives ORT's outputs.
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { generateInputs, generateVar, VarGenOptions } from '../fixtures/generate';
import { encodeModel, loadModel, saveModel } from '../src/onnx/io';
import { halfBitsToFloat32 } from '../src/onnx/half';
import { DataType } from '../src/onnx/schema';
import { Tensor } from '../src/onnx/tensor';
import { convert } from '../src/pipeline';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';
import { readTensorSet, writeTensorSet } from '../src/io';
import { rmDir, runCli, tmpDir } from './helpers/fixtures';
import { widenToFloat32 } from './helpers/precision';

const PN = [1, 2, 3, 4];
const SMALL: VarGenOptions = { depth: 2, width: 64, ffnHidden: 256, vocab: 128, numClasses: 10, patchNums: PN, seed: 7 };
const FAST = { routerWidth: 16, routerEpochs: 1, synthSamples: 2, maxTokens: 4096, clusterBy: 'weights' as const, seed: 0 };

const asFloat32 = (t: ort.Tensor): Float32Array => (t.type === 'float16' ? halfBitsToFloat32(t.data as Uint16Array) : (t.data as Float32Array));

async function run(model: Uint8Array | string, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(model as never, { logSeverityLevel: 3 });
  const r = await s.run(Object.fromEntries(s.inputNames.map((n) => [n, feeds[n]])));
  const out = asFloat32(r[s.outputNames[0]]);
  await s.release();
  return out;
}
const maxAbs = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
/** Feeds with every float16 tensor widened (for the float32 twin). */
const widenFeeds = (f: Record<string, ort.Tensor>) =>
  Object.fromEntries(Object.entries(f).map(([k, t]) => [k, t.type === 'float16' ? new ort.Tensor('float32', asFloat32(t), t.dims) : t]));

interface Style {
  opts: VarGenOptions;
  /** What inspect must report (from the generator's documented output, not from moefy). */
  want: { activation: string; pattern: string; precision: 'float32' | 'float16'; weightLayout: string; opset: number };
}

const STYLES: Style[] = [
  { opts: { exporter: 'dynamo' }, want: { activation: 'gelu_tanh', pattern: 'tanh-GELU chain (Pow)', precision: 'float32', weightLayout: 'out_in_transpose', opset: 18 } },
  { opts: { exporter: 'dynamo_folded' }, want: { activation: 'gelu_tanh', pattern: 'Gelu(approximate=tanh)', precision: 'float32', weightLayout: 'in_out', opset: 20 } },
  { opts: { exporter: 'dynamo_folded', opset: 18 }, want: { activation: 'gelu_tanh', pattern: 'tanh-GELU chain (x·0.5(1+tanh), Pow)', precision: 'float32', weightLayout: 'in_out', opset: 18 } },
  { opts: { exporter: 'dynamo', activation: 'relu', kind: 'step' }, want: { activation: 'relu', pattern: 'Relu', precision: 'float32', weightLayout: 'out_in_transpose', opset: 18 } },
  { opts: { exporter: 'dynamo', precision: 'float16' }, want: { activation: 'gelu_tanh', pattern: 'tanh-GELU chain (Pow)', precision: 'float16', weightLayout: 'out_in_transpose', opset: 18 } },
  { opts: { exporter: 'dynamo_folded', precision: 'mixed' }, want: { activation: 'gelu_tanh', pattern: 'Gelu(approximate=tanh)', precision: 'float16', weightLayout: 'in_out', opset: 20 } },
  { opts: { exporter: 'torchscript', precision: 'float16' }, want: { activation: 'gelu_tanh', pattern: 'tanh-GELU chain', precision: 'float16', weightLayout: 'in_out', opset: 17 } },
];

const dirs: string[] = [];
after(() => dirs.forEach(rmDir));

for (const { opts: style, want } of STYLES) {
  const name = Object.entries(style).map(([k, v]) => `${k}=${v}`).join(' ');
  test(`dynamo/half styles: ${name}: inspect, conversion exact at threshold 0, moefy run`, async () => {
    const dir = tmpDir('dynamo-styles');
    dirs.push(dir);
    const opts = { ...SMALL, ...style };
    const file = path.join(dir, 'm.onnx');
    saveModel(generateVar(opts), file);
    const step = style.kind === 'step';
    const feeds = generateInputs(opts, 2, 9, step ? { pastLen: 14, stepTokens: 16 } : {}) as unknown as Record<string, ort.Tensor>;

    // inspect --json
    const ins = runCli(['inspect', file, '--json', '--patch-nums', PN.join(',')]);
    assert.equal(ins.status, 0, ins.stderr);
    const j = JSON.parse(ins.stdout);
    assert.equal(j.opsets[''], want.opset);
    assert.equal(j.graph.kind, step ? 'step' : 'full');
    assert.deepEqual(j.graph.patchNums, PN);
    assert.equal(j.blocks.length, SMALL.depth);
    j.blocks.forEach((b: Record<string, unknown>, k: number) => {
      assert.deepEqual([b.D, b.H, b.activation, b.pattern, b.precision, b.weightLayout], [64, 256, want.activation, want.pattern, want.precision, want.weightLayout]);
      // The module path: from the name-scope metadata (dynamo) or the node name (TorchScript).
      assert.equal(b.module, style.exporter === 'torchscript' ? `blocks.${k}.ffn.fc1` : `var.blocks.${k}.ffn.fc1`);
    });

    // Conversion at threshold 0 with the model's own activation: the original's function, in the model's precision.
    const calib = path.join(dir, 'calib.npz');
    await writeTensorSet(calib, feeds as never);
    const out = path.join(dir, 'm.moe.onnx');
    await convert(file, { ...FAST, activation: 'keep', experts: 8, fromScale: 1, thresholds: [0], calib, output: out, patchNums: PN });
    const moe = loadModel(out);
    const moeNodes = moe.graph.nodes.filter((n) => n.opType === 'DynamicMoE');
    assert.equal(moeNodes.length, SMALL.depth);
    const wantDt = want.precision === 'float16' ? DataType.FLOAT16 : DataType.FLOAT;
    for (const n of moeNodes) {
      for (const k of [2, 3, 4, 5]) assert.equal(n.inputs[k]!.tensor!.dataType, wantDt, `${n.name} input ${k}`);
      assert.equal(n.inputs[7]!.tensor!.dataType, DataType.FLOAT, 'threshold stays float32');
    }
    // The FFN weights (behind their run-time Transposes or folded) were replaced by the permuted ones, Transposes too.
    assert.deepEqual(moe.graph.initializers.filter((v) => /\.ffn\./.test(v.name)).map((v) => v.name), []);
    assert.equal(moe.graph.nodes.filter((n) => n.opType === 'Transpose' && n.inputs[0]?.tensor).length, loadModel(file).graph.nodes.filter((n) => n.opType === 'Transpose' && n.inputs[0]?.tensor).length - (style.exporter === 'dynamo' ? 2 * SMALL.depth! : 0));
    const got = await run(out, feeds);
    const orig = await run(file, feeds);
    let bound: number;
    if (want.precision === 'float32') {
      bound = 1e-4;
      assert.ok(maxAbs(got, orig) < bound, `max abs ${maxAbs(got, orig)}`);
    } else {
      const twin = await run(encodeModel(widenToFloat32(loadModel(file))), widenFeeds(feeds));
      const ortErr = maxAbs(orig, twin);
      const moeErr = maxAbs(got, twin);
      assert.ok(ortErr > 0, 'the float16 run differs from the float32 twin');
      bound = 2 * ortErr;
      assert.ok(moeErr <= bound, `float16 MoE vs float32 twin ${moeErr} > 2 × ORT's float16 error ${ortErr}`);
      console.log(`${name}: float16 error against the float32 twin: ORT original ${ortErr.toExponential(2)}, MoE ${moeErr.toExponential(2)}`);
    }

    // moefy run (moefy's kernels) of the converted model: ORT's outputs.
    const ranOut = path.join(dir, 'run.npz');
    const r = runCli(['run', out, '--inputs', calib, '--output', ranOut, '--patch-nums', PN.join(','), '--threads', '1']);
    assert.equal(r.status, 0, r.stderr);
    const ranSet = await readTensorSet(ranOut);
    const logits = Object.keys(ranSet).find((k) => /logit/i.test(k))!;
    const ran = asFloat32(ranSet[logits] as unknown as ort.Tensor);
    assert.ok(maxAbs(ran, got) <= bound, `moefy run vs ORT: ${maxAbs(ran, got)}`);
  });
}

/** Block 0's FFN with its first constant `from` replaced by `to` (found by node name or name-scope metadata). */
function breakConstant(opts: VarGenOptions, from: number, to: number): { bytes: Uint8Array; node: string } {
  const m = generateVar(opts);
  for (const n of m.graph.nodes) {
    const scopes = n.proto.metadata_props?.find((p) => p.key === 'pkg.torch.onnx.name_scopes')?.value ?? n.name;
    if (!/blocks\.0[./]ffn/.test(scopes)) continue;
    for (const [k, v] of n.inputs.entries()) {
      if (v?.scalar() !== undefined && Math.abs(v.scalar()! - from) < 1e-6 && (v.producer?.opType === 'Constant' || v.tensor)) {
        const c = m.graph.addInitializer('broken_const', Tensor.fromFloats(Float32Array.of(to), [], v.constantTensor()!.dataType));
        n.setInput(k, c);
        return { bytes: encodeModel(m), node: n.name };
      }
    }
  }
  throw new Error(`no constant ${from} in block 0's FFN`);
}

for (const style of [
  { exporter: 'dynamo' }, { exporter: 'dynamo_folded', opset: 18 }, { exporter: 'dynamo', precision: 'float16' }, { exporter: 'torchscript' }, { exporter: 'torchscript', activation: 'gelu_erf_decomposed' },
] as VarGenOptions[]) {
  const name = Object.entries(style).map(([k, v]) => `${k}=${v}`).join(' ');
  test(`a GELU chain with its 0.5 changed (${name}) is refused with one line naming the node and the predicate`, async () => {
    const dir = tmpDir('dynamo-broken');
    dirs.push(dir);
    const { bytes, node } = breakConstant({ ...SMALL, ...style }, 0.5, 0.625);
    const file = path.join(dir, 'broken.onnx');
    fs.writeFileSync(file, bytes);
    const r = runCli(['inspect', file, '--patch-nums', PN.join(',')]);
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.ok(lines[0].includes(`'${node}'`), lines[0]);
    assert.match(lines[0], /should be the constant 0\.5, found 0\.625/);
  });
}

test('no FFN at all: the error names the closest candidate and why it is not an FFN', async () => {
  const dir = tmpDir('dynamo-noffn');
  dirs.push(dir);
  // Every fc1 weight of a dynamo export fed from a graph input instead of an initializer: no fc1 is a linear layer.
  const m = generateVar({ ...SMALL, exporter: 'dynamo' });
  const fc2Names: string[] = [];
  for (const n of m.graph.nodes) {
    const scopes = n.proto.metadata_props?.find((p) => p.key === 'pkg.torch.onnx.name_scopes')?.value ?? '';
    if (n.opType === 'Transpose' && /ffn\.fc1'/.test(scopes)) {
      const w = m.graph.createValue('w_in');
      w.info = { name: w.name, type: { tensor_type: { elem_type: DataType.FLOAT, shape: { dim: [{ dim_value: 256 }, { dim_value: 64 }] } } } };
      m.graph.inputs.push(w);
      n.setInput(0, w);
    }
    if (n.opType === 'MatMul' && /ffn\.fc2'/.test(scopes)) fc2Names.push(n.name);
  }
  const file = path.join(dir, 'noffn.onnx');
  fs.writeFileSync(file, encodeModel(m));
  const r = runCli(['inspect', file, '--patch-nums', PN.join(',')]);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /not a VAR: no FFN .* closest: at node '([^']+)' \(MatMul\) \(256→64\): no linear layer 64→256 within 16 nodes above it/);
  assert.ok(r.stderr.includes(`'${fc2Names[0]}'`), r.stderr);
});

test('a bfloat16 model: inspect reads it, conversion is refused with one line saying why', async () => {
  const dir = tmpDir('dynamo-bf16');
  dirs.push(dir);
  const m = generateVar({ ...SMALL, exporter: 'dynamo_folded' });
  // Every float initializer as bfloat16 (the top 16 bits of each float32), as model.to(torch.bfloat16) stores them.
  for (const v of m.graph.initializers) {
    if (v.tensor!.dataType !== DataType.FLOAT) continue;
    const f = v.tensor!.toFloat32();
    const bits = new Uint16Array(f.length);
    const u = new Uint32Array(Float32Array.from(f).buffer);
    for (let i = 0; i < f.length; i++) bits[i] = u[i] >>> 16;
    v.tensor = new Tensor(DataType.BFLOAT16, v.tensor!.dims, { kind: 'bytes', bytes: new Uint8Array(bits.buffer) });
  }
  const file = path.join(dir, 'bf16.onnx');
  fs.writeFileSync(file, encodeModel(m));
  const ins = runCli(['inspect', file, '--json', '--patch-nums', PN.join(',')]);
  assert.equal(ins.status, 0, ins.stderr);
  assert.deepEqual(JSON.parse(ins.stdout).blocks.map((b: { precision: string }) => b.precision), ['bfloat16', 'bfloat16']);
  const out = path.join(dir, 'bf16.moe.onnx');
  const r = runCli([file, '--experts', '8', '--from-scale', '1', '--patch-nums', PN.join(','), '-o', out]);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /bfloat16 models cannot be converted: ONNX Runtime's CPU provider has no bfloat16 MatMul\/Add kernels/);
  assert.ok(!fs.existsSync(out));
});

test('float16 step graphs: full-sequence float16 calibration data through a KV-cache chain, exact at threshold 0', async () => {
  const dir = tmpDir('dynamo-half-step');
  dirs.push(dir);
  const base = { ...SMALL, exporter: 'dynamo' as const, precision: 'float16' as const };
  const step0 = path.join(dir, 'step0.onnx');
  const step = path.join(dir, 'step.onnx');
  saveModel(generateVar({ ...base, kind: 'step0' }), step0);
  saveModel(generateVar({ ...base, kind: 'step' }), step);
  const calib = path.join(dir, 'calib.npz');
  await writeTensorSet(calib, generateInputs({ ...base, kind: 'full' }, 2, 3) as never);
  const out = path.join(dir, 'step.moe.onnx');
  const r = await convert(step, { ...FAST, activation: 'keep', experts: 8, fromScale: 2, thresholds: [0], calib, kvPrefix: [step0], output: out, patchNums: PN });
  assert.match(r.passes.find((p) => p.name === 'capture')!.summary, /scales 2…4/);
  const feeds = generateInputs({ ...base, kind: 'step' }, 2, 9, { pastLen: 14, stepTokens: 16 }) as unknown as Record<string, ort.Tensor>;
  const twin = await run(encodeModel(widenToFloat32(loadModel(step))), widenFeeds(feeds));
  const ortErr = maxAbs(await run(step, feeds), twin);
  const moeErr = maxAbs(await run(out, feeds), twin);
  assert.ok(ortErr > 0 && moeErr <= 2 * ortErr, `float16 MoE ${moeErr} vs ORT's float16 error ${ortErr}`);
});

test('eval of a float16 model against its conversion, from float32 inputs (rounded to float16 as in calibration)', async () => {
  const dir = tmpDir('dynamo-half-eval');
  dirs.push(dir);
  const opts = { ...SMALL, exporter: 'dynamo' as const, precision: 'float16' as const };
  const file = path.join(dir, 'm.onnx');
  saveModel(generateVar(opts), file);
  // The float32 draws of the same inputs: what a user's float32 calibration set holds.
  const inputs = generateInputs({ ...opts, precision: 'float32' }, 2, 9);
  const calib = path.join(dir, 'calib.npz');
  await writeTensorSet(calib, inputs);
  const out = path.join(dir, 'm.moe.onnx');
  await convert(file, { ...FAST, activation: 'keep', experts: 8, fromScale: 1, thresholds: [0], calib, output: out, patchNums: PN });
  const dense = await openSide(file, { patchNums: PN });
  const moe = await openSide(out, { patchNums: PN });
  try {
    const r = (await evaluate(dense, moe, inputs)).reports[0];
    assert.equal(r.samples, 2);
    // Threshold 0: the same function in float16; the logits differ by float16 rounding only.
    for (const s of r.scales) assert.ok(s.kl < 1e-4, `scale ${s.scale}: KL ${s.kl}`);
  } finally {
    await closeSide(dense);
    await closeSide(moe);
  }
});
