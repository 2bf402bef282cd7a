// moefy eval on the really trained ReLU model: the calibration set split into 48 calibration + 16 held-out sequences,
// var_relu_h001_tf.onnx converted with the CLI's defaults at --budget 0.7 --experts 64 --from-scale 8 on the 48. Checked: the FLOPs eval
// reports on the calibration data match the conversion report's (per-scale MoE FFN FLOPs), the held-out quality
// (CE increase, top-1 agreement: asserted against the project's targets ≤ 0.01 nats and ≥ 95%), the held-out FFN
// FLOPs with the routers (within 0.05 of the budget) and active fraction (within 0.05 of the budget less the routers'
// share), the sweep's CSV and PNG, and the router maps.
// The budget counts the routers (what the user pays): 64 routers' width-128 MLPs cost 2·(128·128 + 128·64) FLOPs per
// token against the FFN's 4·128·512, 18.75%; at --budget 0.5 the experts get 31% and the targets are missed
// (measured: +0.0175 nats, 92.4% top-1), at 0.7 they get ~51%, what --budget 0.5 gave before routers counted.
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readTensorSet, sliceSampleSet, TensorSet, writeTensorSet } from '../src/io';
import { ROUTER_MAP_SIZE, writeRouterMaps } from '../src/eval/router-maps';
import { closeSide, EvalSide, openSide } from '../src/eval/side';
import { SWEEP_PNG_SIZE, sweep } from '../src/eval/sweep';
import { evaluate, EvalReport } from '../src/eval/teacher';
import { defaultRouterWidth } from '../src/convert-options';
import { ConversionReport, convert } from '../src/pipeline';
import { rmDir, tmpDir, TRAINED, TRAINED_ARCH } from './helpers/fixtures';
import { PNG } from 'pngjs';

/** PNG signature, IHDR size, and a pngjs decode. */
function checkPng(file: string, width: number, height: number): void {
  const b = fs.readFileSync(file);
  assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `${file}: PNG signature`);
  assert.equal(b.subarray(12, 16).toString('ascii'), 'IHDR');
  assert.equal(b.readUInt32BE(16), width, `${file}: width`);
  assert.equal(b.readUInt32BE(20), height, `${file}: height`);
  const img = PNG.sync.read(b);
  assert.equal(img.width, width);
  assert.equal(img.height, height);
}

const MODEL = path.join(TRAINED, 'var_relu_h001_tf.onnx');
const CALIB_N = 48;
const BUDGET = 0.7;
const EXPERTS = 64;
const ROUTER_WIDTH = defaultRouterWidth(TRAINED_ARCH.C);
/** The routers' FLOPs over the dense FFN's, per token, from the architecture (README of the fixtures). */
const ROUTER_SHARE = (2 * (TRAINED_ARCH.C * ROUTER_WIDTH + ROUTER_WIDTH * EXPERTS)) / (4 * TRAINED_ARCH.C * TRAINED_ARCH.H);


let dir: string;
let calib: TensorSet, heldout: TensorSet;
let report: ConversionReport;
let dense: EvalSide, moe: EvalSide;
const moeFile = () => path.join(dir, 'relu.moe.onnx');

before(async () => {
  dir = tmpDir('eval-trained');
  const all = await readTensorSet(path.join(TRAINED, 'calib'));
  assert.equal(all.label_B.dims[0], 64);
  await writeTensorSet(path.join(dir, 'calib48'), sliceSampleSet(all, 0, CALIB_N));
  await writeTensorSet(path.join(dir, 'heldout16'), sliceSampleSet(all, CALIB_N, 64));
  calib = await readTensorSet(path.join(dir, 'calib48'));
  heldout = await readTensorSet(path.join(dir, 'heldout16'));
  assert.equal(heldout.gt_idx_BL.dims[0], 16);
  report = await convert(MODEL, {
    // 64 experts of 8 neurons (see the README's table for 32 of 16). Everything else is the CLI's defaults
    // (src/convert-options.ts).
    experts: EXPERTS, fromScale: 8, budget: BUDGET, calib: path.join(dir, 'calib48'), output: moeFile(),
  });
  dense = await openSide(MODEL, { withFfnIn: true });
  moe = await openSide(moeFile());
});

after(async () => {
  if (dense) await closeSide(dense);
  if (moe) await closeSide(moe);
  rmDir(dir);
});

test('eval FLOPs on the calibration data match the conversion report', async () => {
  const r = (await evaluate(dense, moe, calib, { replayRouters: true })).reports[0];
  assert.equal(r.samples, CALIB_N);
  assert.deepEqual(r.moeScales.scales, [8, 9, 10]);
  // The budget is met on the calibration data, routers included (the chooser aims within 0.02 below it).
  const spent = report.totals.moeScalesBudgetSpent!;
  assert.ok(spent <= BUDGET + 1e-9 && spent >= BUDGET - 0.025, `calibration spend ${spent} for budget ${BUDGET}`);
  const moeRows = report.scales.filter((x) => x.moe);
  assert.ok(Math.abs(moeRows.reduce((a, x) => a + x.ffnFlopsMoe, 0) / moeRows.reduce((a, x) => a + x.ffnFlopsDense, 0) - spent) < 1e-12);
  for (const s of r.scales) {
    const c = report.scales[s.scale - 1];
    assert.equal(s.moe, c.moe);
    assert.equal(s.ffnFlopsDense, c.ffnFlopsDense);
    // The routers replayed on the dense FFN inputs (what the conversion measured): equal within float tolerance.
    assert.ok(Math.abs(s.ffnFlopsMoeDenseStream! - c.ffnFlopsMoe) <= 1e-4 * c.ffnFlopsMoe, `scale ${s.scale}: ${s.ffnFlopsMoeDenseStream} vs report ${c.ffnFlopsMoe}`);
    assert.ok(Math.abs(s.activeFractionDenseStream! - (c.activeFraction ?? 1)) < 1e-4);
    if (s.moe) assert.equal(s.routerFlops, c.routerFlops);
    // Inside the MoE model, layers 2… see the MoE-perturbed stream: the measured FLOPs drift a little.
    assert.ok(Math.abs(s.ffnFlopsMoe - c.ffnFlopsMoe) <= 0.03 * c.ffnFlopsMoe, `scale ${s.scale}: measured ${s.ffnFlopsMoe} vs report ${c.ffnFlopsMoe}`);
    // The first layer sees the dense stream in both: its measured fraction is the report's.
    if (s.moe) {
      const first = s.activeFractionPerLayer[0]!;
      assert.ok(Math.abs(first - report.layers[0].activeFractionPerScale[String(s.scale)]) < 1e-4);
    }
  }
  console.log(`calibration (48): FFN FLOPs per sample dense ${r.totals.ffnFlopsDense}, report MoE ${report.totals.ffnFlopsMoe}, measured MoE ${r.totals.ffnFlopsMoe}`);
});

let held: EvalReport;
let heldMaps: Int32Array[] | null;

test('held-out quality: CE increase and top-1 agreement on scales 8–10, FFN FLOPs with routers within 0.05 of the budget', async () => {
  const res = await evaluate(dense, moe, heldout, { keepActiveOf: 0 });
  held = res.reports[0];
  heldMaps = res.activeMaps[0];
  const m = held.moeScales;
  assert.equal(held.groundTruth, true);
  const line = (s: { scale: number; ceIncrease: number | null; top1: number; activeFraction: number; kl: number }) =>
    `scale ${s.scale}: CE +${s.ceIncrease!.toFixed(4)} nats, top-1 ${(100 * s.top1).toFixed(1)}%, KL ${s.kl.toFixed(4)}, active ${(100 * s.activeFraction).toFixed(1)}%`;
  console.log(`held-out (16 sequences), thresholds ${held.thresholds!.slice(7).map((t) => t.toFixed(3)).join(',')}:`);
  for (const s of held.scales.filter((x) => x.moe)) console.log('  ' + line(s));
  const ceOk = m.ceIncrease! <= 0.01, agOk = m.top1 >= 0.95;
  console.log(`  scales 8-10: CE ${m.ceDense!.toFixed(4)} → ${m.ceMoe!.toFixed(4)} (+${m.ceIncrease!.toFixed(4)} nats; target ≤ 0.01: ${ceOk ? 'met' : 'NOT met'}), top-1 ${(100 * m.top1).toFixed(1)}% (target ≥ 95%: ${agOk ? 'met' : 'NOT met'}), active fraction ${m.activeFraction.toFixed(4)} (budget ${BUDGET} less routers ${ROUTER_SHARE.toFixed(4)}), FFN FLOPs ${m.ffnFlopsMoe.toFixed(0)} / ${m.ffnFlopsDense.toFixed(0)} = ${(m.ffnFlopsMoe / m.ffnFlopsDense).toFixed(3)} (routers included)`);
  assert.ok(Math.abs(m.ffnFlopsMoe / m.ffnFlopsDense - BUDGET) <= 0.05, `held-out FFN FLOPs ratio ${m.ffnFlopsMoe / m.ffnFlopsDense}`);
  assert.ok(Math.abs(m.activeFraction - (BUDGET - ROUTER_SHARE)) <= 0.05, `held-out active fraction ${m.activeFraction}`);
  // The project's quality target (mission): at most 0.01 nats lost, at least 95% top-1 agreement on scales 8–10.
  assert.ok(ceOk, `CE increase ${m.ceIncrease} nats > 0.01`);
  assert.ok(agOk, `top-1 agreement ${m.top1} < 0.95`);
  // The dense scales are exact.
  for (const s of held.scales.filter((x) => !x.moe)) assert.ok(s.kl < 1e-6 && s.top1 === 1, `dense scale ${s.scale}`);
});

test('router maps: a PNG per scale of the expected size', async () => {
  assert.ok(heldMaps, 'the held-out eval kept the active maps of sample 0');
  const out = path.join(dir, 'maps');
  fs.mkdirSync(out);
  const files = await writeRouterMaps(out, heldMaps!, moe.structure.layout, [8, 9, 10], { experts: moe.experts, sample: 0, thresholds: held.thresholds });
  assert.equal(files.length, 3);
  for (const f of files) checkPng(f, ROUTER_MAP_SIZE.width, ROUTER_MAP_SIZE.height);
});

test('sweep: CSV with one row per (family, setting), and a PNG of the expected size', async () => {
  const out = path.join(dir, 'sweep');
  const grid = [0, 0.3];
  const r = await sweep(dense, moe, heldout, { dir: out, grid, limit: 2 });
  const lines = fs.readFileSync(r.files.csv, 'utf8').trim().split('\n');
  const families = ['uniform', 'per-scale', 'from-scale 7', 'from-scale 8', 'from-scale 9'];
  assert.equal(lines.length, 1 + families.length * grid.length);
  const keys = lines.slice(1).map((l) => l.split(',').slice(0, 2).join('/'));
  assert.equal(new Set(keys).size, keys.length);
  for (const f of families) for (const g of grid) assert.ok(keys.includes(`${f}/${g}`), `${f}/${g}`);
  // Threshold 0 runs every expert (the dense model's outputs, plus the routers' FLOPs); a positive threshold spends less.
  const atZero = r.rows.find((row) => row.setting === 0)!.totals.ffnFlopsMoe;
  for (const row of r.rows) {
    if (row.setting === 0) {
      assert.ok(row.totals.kl < 1e-6);
      assert.ok(row.totals.ffnFlopsMoe > row.totals.ffnFlopsDense);
    } else assert.ok(row.totals.ffnFlopsMoe < atZero);
  }
  checkPng(r.files.png, SWEEP_PNG_SIZE.width, SWEEP_PNG_SIZE.height);
  assert.ok(JSON.parse(fs.readFileSync(r.files.json, 'utf8')).rows.length === families.length * grid.length);
});
