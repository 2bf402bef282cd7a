/**
 * A converted VAR-d16-sized last-scale step graph (16 blocks, D 1024, H 4096, E 32; l 256, past 424, CFG doubles
 * the batch) against the dense one, both in moefy runtime sessions on the same ONNX Runtime, at the default budget.
 * The dense model is the ReLUfied one (what the MoE equals at threshold 0).
 *
 *   node dist/bench/model-bench.js [--threads 2] [--reps 3] [--budget 0.6] [--experts 32]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { D16, generateInputs, generateVarD16Like } from '../fixtures/generate';
import { saveModel } from '../src/onnx/io';
import { convert } from '../src/pipeline';
import { createSession } from '../src/runtime';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const threads = Number(arg('threads', '2'));
  const reps = Number(arg('reps', '3'));
  const budget = Number(arg('budget', '0.6'));
  const experts = Number(arg('experts', '32'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-model-bench-'));
  try {
    const opts = { activation: 'relu' as const, lastScaleStep: true };
    const dense = path.join(dir, 'd16_step.onnx');
    saveModel(generateVarD16Like(opts), dense, { externalData: true });
    const moe = path.join(dir, 'd16_step.moe.onnx');
    const t0 = Date.now();
    const r = await convert(dense, {
      // The defaults (src/convert-options.ts) but for fewer router epochs and synthesised samples.
      experts, fromScale: 8, budget, routerEpochs: 10, synthSamples: 4, output: moe,
    });
    const last = r.scales[r.scales.length - 1];
    console.log(`converted in ${((Date.now() - t0) / 1000).toFixed(0)} s: scale ${last.scale} threshold ${last.threshold.toFixed(3)}, expected active fraction ${last.activeFraction?.toFixed(3)} (calibration: synthesised inputs)`);
    const feeds = generateInputs({ ...D16, kind: 'step', batch: 1, stepTokens: 256, pastLen: 424 }, 1, 3, { pastLen: 424, stepTokens: 256 }) as unknown as Record<string, Tensor>;
    const time = async (file: string, fetchActive: boolean) => {
      const s = await createSession(file, { intraOpNumThreads: threads });
      const feedsFor = Object.fromEntries(s.inputNames.map((n) => [n, feeds[n]]));
      await s.run(feedsFor); // warm-up
      let best = Infinity;
      let out: Record<string, Tensor> = {};
      for (let i = 0; i < reps; i++) {
        const t = process.hrtime.bigint();
        out = await s.run(feedsFor, fetchActive ? s.outputNames : undefined);
        best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e6);
      }
      s.release();
      return { ms: best, out };
    };
    const d = await time(dense, false);
    const m = await time(moe, false);
    console.log(`\nVAR-d16-sized last-scale step (2 rows × 256 tokens), ${threads} threads, best of ${reps}`);
    console.log(`dense ${d.ms.toFixed(0)} ms   MoE ${m.ms.toFixed(0)} ms   MoE/dense ${(m.ms / d.ms).toFixed(3)}`);
    console.log(`FFN FLOPs MoE/dense at this budget (calibration estimate): ${(last.ffnFlopsMoe / last.ffnFlopsDense).toFixed(3)}`);
    // The time the MoE graph would take if time followed FLOPs (attention, projections and the head unchanged).
    const flopRatio = r.totals.flopsMoe / r.totals.flopsDense;
    console.log(
      `whole-graph FLOPs MoE/dense: ${flopRatio.toFixed(3)}; FLOP-proportional time ${(d.ms * flopRatio).toFixed(0)} ms; ` +
        `MoE / FLOP-proportional ${(m.ms / (d.ms * flopRatio)).toFixed(3)} (target issue 10: <= 1.05)`,
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
