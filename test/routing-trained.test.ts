// The default routing rule of a --budget conversion on both trained models, judged as eval-trained.test.ts does: the
// calibration set split into 48 sequences to convert on and 16 held out, 32 experts, --from-scale 8, --budget 0.5
// (the budget of the goals), everything else the defaults; held-out CE increase and top-1 agreement on scales
// 8–10 against the dense model in ONNX Runtime, and the FFN FLOPs with the routers within 0.03 of the budget. On the
// ReLU model the default is also converted with DMoE-VAR's relative rule: the default must lose less (the choice this
// test guards; README, "Routing rules and skipped-expert compensation", has every rule and budget).
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { BUDGET_ROUTING } from '../src/convert-options';
import { readTensorSet, sliceSampleSet, TensorSet, writeTensorSet } from '../src/io';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';
import type { RoutingRule } from '../src/op';
import { convert } from '../src/pipeline';
import { rmDir, tmpDir, TRAINED } from './helpers/fixtures';

const BUDGET = 0.5;
/**
 * Measured with the defaults (2-core CPU), held-out scales 8–10: ReLU +0.0140 nats, 92.2% top-1 (relative: +0.0152,
 * 92.0%); GELU (repaired) +0.0338, 85.5% (relative: +0.0380, 84.3%). The bounds leave a little room.
 */
const EXPECT = {
  relu: { model: 'var_relu_h001_tf.onnx', maxCe: 0.0148, minTop1: 0.915 },
  gelu: { model: 'var_gelu_tf.onnx', maxCe: 0.036, minTop1: 0.848 },
};

let dir: string;
let heldout: TensorSet;

before(async () => {
  dir = tmpDir('routing-trained');
  const all = await readTensorSet(path.join(TRAINED, 'calib'));
  await writeTensorSet(path.join(dir, 'calib48'), sliceSampleSet(all, 0, 48));
  heldout = sliceSampleSet(all, 48, 64);
});

after(() => rmDir(dir));

/** Converts with the defaults (or a rule) and judges the held-out sequences: the MoE scales' totals. */
async function judge(model: string, routing?: RoutingRule) {
  const out = path.join(dir, `${path.basename(model, '.onnx')}.${routing ?? 'default'}.moe.onnx`);
  const report = await convert(path.join(TRAINED, model), { experts: 32, fromScale: 8, budget: BUDGET, calib: path.join(dir, 'calib48'), output: out, ...(routing ? { routing } : {}) });
  const dense = await openSide(path.join(TRAINED, model), {});
  const moe = await openSide(out);
  try {
    const m = (await evaluate(dense, moe, heldout, {})).reports[0].moeScales;
    console.log(`${model} ${report.options.routing}${report.options.skipBias ? ' + skip_bias' : ''}, --budget ${BUDGET}, held-out scales 8-10: CE +${m.ceIncrease!.toFixed(4)} nats, top-1 ${(100 * m.top1).toFixed(1)}%, FFN FLOPs with routers ${(100 * m.ffnFlopsMoe / m.ffnFlopsDense).toFixed(1)}%`);
    assert.deepEqual(m.scales, [8, 9, 10]);
    const spent = m.ffnFlopsMoe / m.ffnFlopsDense;
    assert.ok(Math.abs(spent - BUDGET) <= 0.03, `FFN FLOPs with routers ${spent} of dense, budget ${BUDGET}`);
    return { report, ce: m.ceIncrease!, top1: m.top1 };
  } finally {
    await closeSide(dense);
    await closeSide(moe);
  }
}

test('ReLU model: the default rule at --budget 0.5, and DMoE-VAR\'s relative rule loses more', async () => {
  const d = await judge(EXPECT.relu.model);
  assert.equal(d.report.options.routing, BUDGET_ROUTING);
  assert.ok(d.ce <= EXPECT.relu.maxCe, `CE increase ${d.ce} > ${EXPECT.relu.maxCe}`);
  assert.ok(d.top1 >= EXPECT.relu.minTop1, `top-1 ${d.top1} < ${EXPECT.relu.minTop1}`);
  const rel = await judge(EXPECT.relu.model, 'relative');
  assert.ok(d.ce < rel.ce, `default ${d.ce} vs relative ${rel.ce}`);
});

test('GELU model (repaired by default): the default rule at --budget 0.5', async () => {
  const d = await judge(EXPECT.gelu.model);
  assert.equal(d.report.options.routing, BUDGET_ROUTING);
  assert.equal(d.report.options.repair, true);
  assert.ok(d.ce <= EXPECT.gelu.maxCe, `CE increase ${d.ce} > ${EXPECT.gelu.maxCe}`);
  assert.ok(d.top1 >= EXPECT.gelu.minTop1, `top-1 ${d.top1} < ${EXPECT.gelu.minTop1}`);
});
