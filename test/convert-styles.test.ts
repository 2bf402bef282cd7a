// Conversion exactness (threshold 0) across the export styles the generator writes: the Gelu op at opset 20, the
// erf-GELU chain, decomposed LayerNorm at opset 14 (IR 7), Gemm linears between Reshapes; and --activation keep
// against the original model for each GELU style. The reference is ONNX Runtime running the dense model.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { generateInputs, generateVar, VarGenOptions } from '../fixtures/generate';
import { saveModel } from '../src/onnx/io';
import { convert } from '../src/pipeline';
import { writeTensorSet } from '../src/io';
import { rmDir, tmpDir } from './helpers/fixtures';
import { relufied } from './helpers/relufied';
import { FAST } from './helpers/fast';

const SMALL: VarGenOptions = { depth: 2, width: 64, ffnHidden: 256, vocab: 128, numClasses: 10, patchNums: [1, 2, 3, 4], seed: 5 };

async function run(model: Uint8Array | string, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(model as never, { logSeverityLevel: 3 });
  const r = await s.run(Object.fromEntries(s.inputNames.map((n) => [n, feeds[n]])));
  const out = r[s.outputNames[0]].data as Float32Array;
  await s.release();
  return out;
}

const maxAbs = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

const STYLES: VarGenOptions[] = [
  { activation: 'gelu_op_tanh' },
  { activation: 'gelu_op' },
  { activation: 'gelu_erf_decomposed' },
  { activation: 'gelu_tanh_decomposed', layerNorm: 'decomposed' },
  { activation: 'gelu_tanh_decomposed', linear: 'gemm' },
  { activation: 'relu', kind: 'step' },
];

for (const style of STYLES) {
  const name = Object.entries(style).map(([k, v]) => `${k}=${v}`).join(' ');
  test(`convert, threshold 0: ${name}`, async () => {
    const dir = tmpDir('styles');
    try {
      const opts = { ...SMALL, ...style };
      const file = path.join(dir, 'm.onnx');
      saveModel(generateVar(opts), file);
      const feeds = generateInputs(opts, 2, 9, style.kind === 'step' ? { pastLen: 14, stepTokens: 16 } : {}) as unknown as Record<string, ort.Tensor>;
      const calib = path.join(dir, 'calib.npz');
      await writeTensorSet(calib, feeds as never);
      for (const activation of ['relu', 'keep'] as const) {
        if (activation === 'keep' && style.activation === 'relu') continue;
        const out = path.join(dir, `m.${activation}.moe.onnx`);
        await convert(file, { ...FAST, activation, experts: 8, fromScale: 1, thresholds: [0], calib, output: out, patchNums: SMALL.patchNums });
        const got = await run(out, feeds);
        const want = await run(activation === 'keep' ? file : relufied(file, SMALL.patchNums), feeds);
        assert.ok(maxAbs(got, want) < 1e-4, `${activation}: max abs ${maxAbs(got, want)}`);
      }
    } finally {
      rmDir(dir);
    }
  });
}
