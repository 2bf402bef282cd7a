// The trained ReLU (and GELU, below) model in float16: var_relu_h001_tf.onnx cast to float16 inside (weights and constants rounded as
// model.half() does; float32 in and out, as VAR's get_logits .float()), and the float32 original, both converted
// with the same options (--budget 0.5 --from-scale 8 --experts 32, the CLI's other defaults) on the same 48
// calibration sequences. On the 16 held-out sequences (eval-trained's protocol) the float16 conversion's CE increase
// over its own dense model, on scales 8-10, is within 0.003 nats of the float32 conversion's; the emitted model
// stays float16 (experts, routers).
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { readTensorSet, sliceSampleSet, writeTensorSet } from '../src/io';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';
import { loadModel, saveModel } from '../src/onnx/io';
import { DataType } from '../src/onnx/schema';
import { convert } from '../src/pipeline';
import { rmDir, tmpDir, TRAINED } from './helpers/fixtures';
import { castToFloat16 } from './helpers/precision';

const MODEL = path.join(TRAINED, 'var_relu_h001_tf.onnx');


let dir: string;
before(() => {
  dir = tmpDir('eval-trained-half');
});
after(() => rmDir(dir));

test('trained ReLU model in float16: CE increase on scales 8-10 within 0.003 nats of the float32 conversion', async () => {
  const all = await readTensorSet(path.join(TRAINED, 'calib'));
  await writeTensorSet(path.join(dir, 'calib48'), sliceSampleSet(all, 0, 48));
  const heldout = sliceSampleSet(all, 48, 64);
  const half = path.join(dir, 'relu16.onnx');
  saveModel(castToFloat16(loadModel(MODEL)), half);
  const opts = {
    experts: 32, fromScale: 8, budget: 0.5, calib: path.join(dir, 'calib48'), seed: 0, activation: 'relu' as const, clusterBy: 'activations' as const,
    routerWidth: 128, routerEpochs: 40, routerTarget: 'sqrt' as const, synthSamples: 2, maxTokens: 65536,
  };
  const ce: Record<string, number> = {};
  for (const [name, file] of [['float32', MODEL], ['float16', half]] as const) {
    const out = path.join(dir, `${name}.moe.onnx`);
    await convert(file, { ...opts, output: out });
    if (name === 'float16') {
      const moeNodes = loadModel(out).graph.nodes.filter((n) => n.opType === 'DynamicMoE');
      assert.equal(moeNodes.length, 4);
      for (const n of moeNodes) for (const k of [2, 3, 4, 5]) assert.equal(n.inputs[k]!.tensor!.dataType, DataType.FLOAT16, `${n.name} input ${k}`);
    }
    const dense = await openSide(file);
    const moe = await openSide(out);
    try {
      const r = (await evaluate(dense, moe, heldout)).reports[0];
      const m = r.moeScales;
      assert.deepEqual(m.scales, [8, 9, 10]);
      ce[name] = m.ceIncrease!;
      console.log(`${name}: held-out scales 8-10: CE ${m.ceDense!.toFixed(4)} → ${m.ceMoe!.toFixed(4)} (+${m.ceIncrease!.toFixed(4)} nats), top-1 ${(100 * m.top1).toFixed(1)}%, active ${m.activeFraction.toFixed(3)}`);
    } finally {
      await closeSide(dense);
      await closeSide(moe);
    }
  }
  assert.ok(Math.abs(ce.float16 - ce.float32) <= 0.003, `CE increase float16 ${ce.float16} vs float32 ${ce.float32}`);
});

// A stock GELU checkpoint exported in float16 (PyTorch's dynamo exporter of a .half() model) is repaired by default
// like the float32 one: the same held-out quality within 0.003 nats, and the repaired experts stay float16.
test('trained GELU model in float16: repaired by default, CE increase within 0.003 nats of the float32 conversion', async () => {
  const all = await readTensorSet(path.join(TRAINED, 'calib'));
  const calib = path.join(dir, 'calib48-gelu');
  await writeTensorSet(calib, sliceSampleSet(all, 0, 48));
  const heldout = sliceSampleSet(all, 48, 64);
  const gelu = path.join(TRAINED, 'var_gelu_tf.onnx');
  const half = path.join(dir, 'gelu16.onnx');
  saveModel(castToFloat16(loadModel(gelu)), half);
  const ce: Record<string, number> = {};
  for (const [name, file] of [['float32', gelu], ['float16', half]] as const) {
    const out = path.join(dir, `gelu-${name}.moe.onnx`);
    const report = await convert(file, { experts: 32, fromScale: 8, budget: 0.5, calib, seed: 0, output: out });
    assert.equal(report.options.repair, true, `${name}: repaired by default`);
    assert.ok(report.layers.every((l) => l.repair && l.repair.heldOutRelErrAfter < 0.5 * l.repair.heldOutRelErrBefore), `${name}: the repair lowers every FFN error`);
    if (name === 'float16')
      for (const n of loadModel(out).graph.nodes.filter((x) => x.opType === 'DynamicMoE')) for (const k of [2, 3, 4, 5]) assert.equal(n.inputs[k]!.tensor!.dataType, DataType.FLOAT16, `${n.name} input ${k}`);
    const dense = await openSide(file);
    const moe = await openSide(out);
    try {
      ce[name] = (await evaluate(dense, moe, heldout)).reports[0].moeScales.ceIncrease!;
    } finally {
      await closeSide(dense);
      await closeSide(moe);
    }
  }
  assert.ok(Math.abs(ce.float16 - ce.float32) <= 0.003, `CE increase float16 ${ce.float16} vs float32 ${ce.float32}`);
});
