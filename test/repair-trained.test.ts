// Expert repair on the really trained stock GELU model: var_gelu_tf.onnx converted with the defaults (ReLU experts,
// repair on for a GELU model converted for a budget, closed form then 30 epochs) at --experts 32 --from-scale 8 on the first 48 calibration
// sequences, judged by moefy eval against the dense model in ONNX Runtime on the 16 held-out ones (as
// eval-trained.test.ts). Asserted: the held-out quality on scales 8–10 this repair reaches (measured: see README),
// the budget met, and the repair lowering every layer's FFN error on the held-out calibration tokens.
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { readTensorSet, sliceSampleSet, TensorSet, writeTensorSet } from '../src/io';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';
import { CONVERT_DEFAULTS } from '../src/convert-options';
import { ConversionReport, convert } from '../src/pipeline';
import { rmDir, tmpDir, TRAINED } from './helpers/fixtures';

const MODEL = path.join(TRAINED, 'var_gelu_tf.onnx');
const CALIB_N = 48;
// The budget counts the routers (3.9% of this model's FFN at the default width 32): 0.7 leaves the experts about 66%.
const BUDGET = 0.7;
// Measured with the defaults (2-core CPU; the absolute routing rule): CE +0.0189 nats, top-1 89.8% (with the
// relative rule, the default before: +0.0186, 89.2%); without repair (--activation keep, the best unrepaired choice)
// see README.
const MAX_CE_INCREASE = 0.025;
const MIN_TOP1 = 0.875;


let dir: string;
let report: ConversionReport;
let heldout: TensorSet;

before(async () => {
  dir = tmpDir('repair-trained');
  const all = await readTensorSet(path.join(TRAINED, 'calib'));
  await writeTensorSet(path.join(dir, 'calib48'), sliceSampleSet(all, 0, CALIB_N));
  heldout = sliceSampleSet(all, CALIB_N, 64);
  // Everything else is the CLI's defaults (src/convert-options.ts): router width 32 at D 128, closed form + 30 epochs.
  report = await convert(MODEL, { experts: 32, fromScale: 8, budget: BUDGET, calib: path.join(dir, 'calib48'), output: path.join(dir, 'gelu.moe.onnx') });
});

after(() => rmDir(dir));

test('repair is on by default for the GELU model and lowers every FFN error on held-out calibration tokens', () => {
  assert.equal(report.options.repair, true);
  assert.equal(report.options.repairEpochs, CONVERT_DEFAULTS.repairEpochs);
  assert.equal(report.options.routerWidth, 32);
  for (const l of report.layers) {
    assert.ok(l.repair, `layer ${l.block}: no repair report`);
    assert.ok(l.repair.heldOutRelErrAfter < 0.6 * l.repair.heldOutRelErrBefore, `layer ${l.block}: ${l.repair.heldOutRelErrBefore} → ${l.repair.heldOutRelErrAfter}`);
  }
});

test('held-out quality of the repaired GELU model on scales 8–10', async () => {
  const dense = await openSide(MODEL, {});
  const moe = await openSide(path.join(dir, 'gelu.moe.onnx'));
  try {
    const m = (await evaluate(dense, moe, heldout, {})).reports[0].moeScales;
    console.log(`repaired GELU model, held-out scales 8-10: CE +${m.ceIncrease!.toFixed(4)} nats, top-1 ${(100 * m.top1).toFixed(1)}%, active ${(100 * m.activeFraction).toFixed(1)}%, FFN FLOPs with routers ${(100 * m.ffnFlopsMoe / m.ffnFlopsDense).toFixed(1)}%`);
    assert.deepEqual(m.scales, [8, 9, 10]);
    assert.ok(m.ceIncrease! <= MAX_CE_INCREASE, `CE increase ${m.ceIncrease} > ${MAX_CE_INCREASE}`);
    assert.ok(m.top1 >= MIN_TOP1, `top-1 ${m.top1} < ${MIN_TOP1}`);
    const spent = m.ffnFlopsMoe / m.ffnFlopsDense;
    assert.ok(Math.abs(spent - BUDGET) <= 0.03, `FFN FLOPs with routers ${spent} of dense, budget ${BUDGET}`);
  } finally {
    await closeSide(dense);
    await closeSide(moe);
  }
});
