/**
 * Quality of each routing rule, with and without skipped-expert compensation, on the trained models (README,
 * "Routing rules and skipped-expert compensation"): the calibration set split as the tests do (48 sequences to
 * convert on, 16 held out), one conversion's capture, clustering and routers shared by every variant (the routers do
 * not depend on the rule; the absolute rule normalises them as its conversion does), then per rule and budget the
 * thresholds, the repair stage (GELU models: repair, with or without skip_bias; ReLU models: skip_bias alone or
 * nothing) and the insert, each variant judged by `moefy eval` on the held-out sequences, scales from-scale…last.
 *
 *   node dist/bench/routing-quality.js [--model var_relu_h001_tf.onnx] [--experts 32] [--budgets 0.4,0.5,0.7]
 *                                      [--rules relative,absolute,topk] [--skip-bias both|on|off] [--repair]
 *                                      [--repair-epochs N] [--out results.jsonl]
 *
 * Quality only (CE increase, top-1, FFN FLOPs with routers): no timing. About a minute per variant on 2 cores
 * with the gradient repair, a few seconds without.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { analyseVar } from '../src/analysis/var-structure';
import { ConvertOptions, resolveForModel } from '../src/convert-options';
import { readTensorSet, sliceSampleSet, writeTensorSet } from '../src/io';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';
import { loadModel, saveModel } from '../src/onnx/io';
import type { RoutingRule } from '../src/op';
import { insertStage } from '../src/passes/insert';
import { runStages } from '../src/pipeline';
import { captureStage } from '../src/stages/capture';
import { clusterStage } from '../src/stages/cluster';
import { permuteStage } from '../src/stages/permute';
import { relufyStage } from '../src/stages/relufy';
import { repairStage } from '../src/stages/repair';
import { normaliseRouters, routersStage } from '../src/stages/routers';
import { thresholdsStage } from '../src/stages/thresholds';
import type { Conversion, ConversionInput } from '../src/stages/types';
import { TRAINED } from '../test/helpers/fixtures';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const modelName = arg('model', 'var_relu_h001_tf.onnx');
  const modelFile = path.isAbsolute(modelName) ? modelName : path.join(TRAINED, modelName);
  const experts = Number(arg('experts', '32'));
  const budgets = arg('budgets', '0.4,0.5,0.7').split(',').map(Number);
  const rules = arg('rules', 'relative,absolute,topk').split(',') as RoutingRule[];
  const comp = arg('skip-bias', 'both');
  const skipBiases = comp === 'both' ? [false, true] : [comp === 'on'];
  const out = arg('out', '');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-routing-quality-'));
  const log = (s: string) => process.stderr.write(s + '\n');
  try {
    const all = await readTensorSet(path.join(TRAINED, 'calib'));
    await writeTensorSet(path.join(dir, 'calib48'), sliceSampleSet(all, 0, 48));
    const heldout = sliceSampleSet(all, 48, 64);
    const model = loadModel(modelFile);
    const structure = analyseVar(model);
    const sites = structure.blocks.map((b) => b.ffn!);
    const given: ConvertOptions = { experts, fromScale: 8, budget: budgets[0], calib: path.join(dir, 'calib48') };
    if (process.argv.includes('--repair')) given.repair = true;
    if (process.argv.includes('--repair-epochs')) given.repairEpochs = Number(arg('repair-epochs', '0'));
    const recipe = resolveForModel(given, {
      D: structure.D, patchNums: structure.layout.patchNums, stepScale: null,
      ffns: sites.map((s) => ({ block: s.block, H: s.H, activation: s.activation.kind })),
    });
    const ui = { stage: () => ({ tick: () => {}, stop: () => {} }), log };
    const base: ConversionInput = { model, structure, sites, recipe };
    const pre = (await runStages(base, ui, [captureStage, relufyStage, clusterStage, permuteStage, routersStage])).flow;
    const normalised = await normaliseRouters(pre.routers, pre.sample, recipe.fromScale);
    const dense = await openSide(modelFile, {});
    try {
      for (const routing of rules) {
        for (const budget of budgets) {
          for (const skipBias of skipBiases) {
            const r = { ...recipe, routing, budget, skipBias };
            const flow: Conversion = { ...pre, recipe: r, routers: routing === 'absolute' ? normalised : pre.routers };
            const done = (await runStages(flow, ui, [thresholdsStage, repairStage, insertStage])).flow;
            const file = path.join(dir, 'moe.onnx');
            saveModel(done.output, file);
            const moe = await openSide(file);
            try {
              const m = (await evaluate(dense, moe, heldout, {})).reports[0].moeScales;
              const row = {
                model: path.basename(modelFile), experts, routing, budget, skipBias, repair: r.repair, repairEpochs: r.repairEpochs,
                thresholds: done.plan.thresholds.slice(recipe.fromScale - 1), ceIncrease: m.ceIncrease, top1: m.top1,
                ffnFlops: m.ffnFlopsMoe / m.ffnFlopsDense, activeFraction: m.activeFraction,
                ffnErrHeldOutCalib: done.repaired?.layers.map((l) => l.heldOutRelErrAfter) ?? null,
              };
              console.log(JSON.stringify(row));
              if (out) fs.appendFileSync(out, JSON.stringify(row) + '\n');
            } finally {
              await closeSide(moe);
            }
          }
        }
      }
    } finally {
      await closeSide(dense);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
