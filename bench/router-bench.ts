/**
 * Router-training variants, compared on the same data by CPU time and held-out R² (the machine is shared: wall time
 * means little, CPU seconds of this process are steadier).
 *
 *   node dist/bench/router-bench.js dump DIR [--depth 4] [--samples 64]   capture a VAR-d16-sized proxy once
 *   node dist/bench/router-bench.js train DIR [--layers 0,1] [--opts '{"epochs":40}'] …
 *   node dist/bench/router-bench.js quality [--experts 32] [--budget 0.5] [--opts '{…}']  trained model, held out
 *
 * `--opts` is merged into the trainer's options (TrainRouterOptions) for every layer.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { D16, generateInputs, generateVarD16Like } from '../fixtures/generate';
import { analyseVar } from '../src/analysis/var-structure';
import { computeExpertNorms } from '../src/calib/expert-norms';
import * as rt from '../src/calib/router-train';
import { deriveSeed } from '../src/calib/random';
import { readTensorSet, sliceSampleSet, writeTensorSet } from '../src/io';
import { capture } from '../src/stages/capture';
import { cluster } from '../src/stages/cluster';
import { routerJobs } from '../src/stages/routers';
import { permute } from '../src/stages/permute';
import { convert } from '../src/pipeline';
import { closeSide, openSide } from '../src/eval/side';
import { evaluate } from '../src/eval/teacher';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

function cpu(): number {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e6;
}

async function dump(dir: string): Promise<void> {
  const depth = Number(arg('depth', '4')), samples = Number(arg('samples', '64')), E = Number(arg('experts', '32'));
  fs.mkdirSync(dir, { recursive: true });
  const model = generateVarD16Like({ activation: 'relu', depth });
  const structure = analyseVar(model);
  const o = { experts: E, clusterBy: 'activations' as const, seed: 0, synthSamples: samples, maxTokens: 65536 };
  const calib = path.join(dir, 'calib-in');
  await writeTensorSet(calib, generateInputs({ ...D16, depth, activation: 'relu' }, samples, 7) as never);
  const sites = structure.blocks.map((b) => b.ffn!);
  // A ReLU model: the experts' activation is its own.
  const experts = sites.map(() => 'relu' as const);
  let t = Date.now(), c = cpu();
  const sample = await capture(model, structure, sites, { ...o, calib });
  console.log(`capture ${(Date.now() - t) / 1000} s wall, ${(cpu() - c).toFixed(1)} s CPU`);
  const weights = permute(sites, await cluster(sites, experts, sample, o), experts);
  for (let k = 0; k < sites.length; k++) {
    const cap = sample.layers[k], w = weights[k];
    t = Date.now(); c = cpu();
    const norms = await computeExpertNorms(cap.X.data, cap.N, cap.D, w.W1, w.B1, w.W2, E, w.activation);
    console.log(`layer ${k}: norms ${(Date.now() - t) / 1000} s wall, ${(cpu() - c).toFixed(1)} s CPU`);
    fs.writeFileSync(path.join(dir, `X${k}.bin`), cap.X.data);
    fs.writeFileSync(path.join(dir, `T${k}.bin`), norms);
    fs.writeFileSync(path.join(dir, `meta${k}.json`), JSON.stringify({ N: cap.N, D: cap.D, E }));
  }
  fs.rmSync(calib, { recursive: true, force: true });
}

function load(dir: string, k: number): { X: Float32Array; T: Float32Array; N: number; D: number; E: number } {
  const m = JSON.parse(fs.readFileSync(path.join(dir, `meta${k}.json`), 'utf8'));
  const X = new Float32Array(fs.readFileSync(path.join(dir, `X${k}.bin`)).buffer.slice(0));
  const T = new Float32Array(fs.readFileSync(path.join(dir, `T${k}.bin`)).buffer.slice(0));
  return { X, T, ...m };
}

async function train(dir: string): Promise<void> {
  const layers = arg('layers', '0').split(',').map(Number);
  const variants: Record<string, unknown>[] = JSON.parse(arg('variants', '[{}]'));
  const base = JSON.parse(arg('opts', '{}'));
  for (const k of layers) {
    const d = load(dir, k);
    const fit = d.T.map(Math.sqrt);
    for (const v of variants) {
      const o = { width: 128, epochs: 40, seed: deriveSeed(0, 100 + k), ...base, ...v };
      const t = Date.now(), c = cpu();
      const r = await rt.trainRouter(d.X, fit, d.N, d.D, d.E, o as rt.TrainRouterOptions);
      console.log(`layer ${k} ${JSON.stringify(v)}: R² ${r.heldOutR2.toFixed(4)} (per expert ${r.heldOutR2PerExpert.toFixed(4)}), train mse ${r.trainMse.toExponential(3)}, held-out mse ${r.heldOutMse.toExponential(3)}, epochs ${r.epochs} (best ${r.bestEpoch}), steps ${r.steps}, ${((Date.now() - t) / 1000).toFixed(1)} s wall, ${(cpu() - c).toFixed(1)} s CPU`);
    }
  }
}


async function quality(): Promise<void> {
  const trained = path.resolve(__dirname, '../../../shared/fixtures/trained');
  const model = path.join(trained, arg('model', 'var_relu_h001_tf.onnx'));
  const experts = Number(arg('experts', '32')), budget = Number(arg('budget', '0.5')), epochs = Number(arg('epochs', '40'));
  const over = JSON.parse(arg('opts', '{}'));
  const orig = rt.trainRouter;
  (rt as { trainRouter: typeof orig }).trainRouter = (X, T, N, D, E, o) => orig(X, T, N, D, E, { ...o, ...over });
  // The override lives in this thread: run the router jobs here, not in workers (same bytes either way).
  const pool = routerJobs.run;
  routerJobs.run = (jobs, o) => pool(jobs, { ...o, workers: 1 });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'router-bench-q-'));
  try {
    const all = await readTensorSet(path.join(trained, 'calib'));
    await writeTensorSet(path.join(dir, 'calib48'), sliceSampleSet(all, 0, 48));
    const heldout = sliceSampleSet(all, 48, 64);
    const out = path.join(dir, 'moe.onnx');
    const t = Date.now(), c = cpu();
    const rep = await convert(model, {
      experts, fromScale: 8, budget, calib: path.join(dir, 'calib48'), seed: Number(arg('seed', '0')), activation: 'relu', clusterBy: 'activations',
      routerWidth: 128, routerEpochs: epochs, routerTarget: 'sqrt', synthSamples: 2, maxTokens: 65536, output: out,
    });
    const secs = (Date.now() - t) / 1000, cs = cpu() - c;
    const dense = await openSide(model), moe = await openSide(out);
    const m = (await evaluate(dense, moe, heldout, {})).reports[0].moeScales;
    await closeSide(dense);
    await closeSide(moe);
    console.log(`quality ${JSON.stringify(over)} E ${experts} budget ${budget}: R² ${rep.layers.map((l) => l.routerR2!.toFixed(4)).join(',')}; held-out CE +${m.ceIncrease!.toFixed(4)}, top-1 ${(100 * m.top1).toFixed(2)}%, active ${m.activeFraction.toFixed(3)}, FFN FLOPs with routers ${(m.ffnFlopsMoe / m.ffnFlopsDense).toFixed(3)}; convert ${secs.toFixed(1)} s wall ${cs.toFixed(1)} s CPU`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const mode = process.argv[2];
  if (mode === 'dump') await dump(process.argv[3]);
  else if (mode === 'train') await train(process.argv[3]);
  else if (mode === 'quality') await quality();
  else throw new Error('mode: dump | train | quality');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
