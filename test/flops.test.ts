// Issue 2, item 3: FLOP accounting. The reference counts below are written from VAR's architecture (research doc
// §1, fixtures' README), not from moefy's code: one multiply-add = 2 FLOPs, and per block
//   qkv 2·C·3C, proj 2·C·C, FFN fc1 + fc2 2·C·H + 2·H·C (= 16·C² with H = 4C)       per token row
//   attention (Q·Kᵀ and A·V over all heads) 2·2·C·kv_s per query token, kv_s = tokens of scales ≤ s
//   AdaLN ada_lin 2·C·6C                                                             per sample row
// outside the blocks: word_embed 2·Cvae·C per token (not for the first, class, token), head 2·C·V per token,
// head_nm's AdaLN 2·C·2C per sample row. Rows = batch × 2 for step graphs (CFG doubles the batch inside).
import { test } from 'node:test';
import assert from 'node:assert';
import * as path from 'node:path';
import { loadModel } from '../src/onnx/io';
import { inspectModel } from '../src/inspect';
import { analyseVar } from '../src/analysis/var-structure';
import { countFlops } from '../src/analysis/flops';
import { FixtureExpectation, layoutOf, VAR_PATCH_NUMS_README, varFixtures } from './helpers/fixtures';

interface Arch {
  depth: number;
  C: number;
  H: number;
  V: number;
  Cvae: number;
}

/** FLOPs of one scale s (0-based) for `rows` transformer rows, from the architecture. */
function archScaleFlops(a: Arch, s: number, rows: number, perSampleThisRun: boolean): number {
  const { tokens, kv } = layoutOf(VAR_PATCH_NUMS_README);
  const t = tokens[s];
  const { depth, C, V, Cvae } = a;
  assert.strictEqual(a.H, 4 * C, 'these models have mlp_ratio 4');
  const blockPerToken = 2 * C * 3 * C + 2 * C * C + 16 * C * C;
  // word_embed runs on x, i.e. on every token except the class token, which is all of scale 0 (1 token).
  const xTokens = s === 0 ? 0 : t;
  const linear = depth * blockPerToken * t + 2 * Cvae * C * xTokens + 2 * C * V * t;
  const attention = depth * 4 * C * t * kv[s];
  const perSample = perSampleThisRun ? depth * 2 * C * 6 * C + 2 * C * 2 * C : 0;
  return rows * (linear + attention + perSample);
}

/** FFN FLOPs of one scale: 4·D·H per token row per block (fc1 2·D·H + fc2 2·H·D). */
function ffnPerScale(e: FixtureExpectation, t: number, rows: number): number {
  return 4 * e.D * e.H * t * rows * e.depth;
}

/** The reference total over the scales a graph computes. */
function archTotal(e: FixtureExpectation, batch: number): { total: number; perScale: number[] } {
  const a: Arch = { depth: e.depth, C: e.D, H: e.H, V: e.V, Cvae: e.Cvae };
  const rows = batch * e.rowsPerSample;
  const scales = e.stepScale !== null ? [e.stepScale - 1] : VAR_PATCH_NUMS_README.map((_, k) => k);
  // The full graph computes AdaLN once per run; a step graph once per run too, and it runs once per scale.
  const perScale = scales.map((s) => archScaleFlops(a, s, rows, e.kind === 'step' || s === 0));
  return { total: perScale.reduce((x, y) => x + y, 0), perScale };
}

const within = (got: number, want: number, rel: number) => Math.abs(got - want) <= rel * want;

const cases = varFixtures().filter((e) => !/var_step_s[1-8]\.onnx/.test(e.file));

for (const e of cases) {
  test(`FLOPs: ${path.basename(e.file)}: FFN per scale exact, total within 1% of the architecture count`, () => {
    const model = loadModel(e.file);
    const report = inspectModel(model, e.file);
    const { tokens } = layoutOf(VAR_PATCH_NUMS_README);
    // Report (batch 1).
    assert.strictEqual(report.flops.batch, 1);
    for (const s of report.scales) {
      assert.strictEqual(s.flops.ffn, ffnPerScale(e, tokens[s.scale - 1], e.rowsPerSample), `scale ${s.scale} FFN`);
      assert.strictEqual(s.flops.head, 2 * e.D * e.V * tokens[s.scale - 1] * e.rowsPerSample, `scale ${s.scale} head`);
    }
    const ref = archTotal(e, 1);
    assert.ok(within(report.flops.total, ref.total, 0.01), `total ${report.flops.total} vs architecture ${ref.total} (${((report.flops.total / ref.total - 1) * 100).toFixed(3)}%)`);
    report.scales.forEach((s, k) => assert.ok(within(s.total, ref.perScale[k], 0.01), `scale ${s.scale}: ${s.total} vs ${ref.perScale[k]}`));
    assert.strictEqual(report.flops.totals.ffn, report.scales.reduce((a, s) => a + ffnPerScale(e, s.tokens, e.rowsPerSample), 0));
    // A larger batch scales every count linearly (rows = rowsPerSample × batch).
    const batch = 3;
    const f3 = countFlops(model, analyseVar(model), batch);
    assert.strictEqual(f3.rowsPerSample, e.rowsPerSample);
    for (const s of f3.scales) assert.strictEqual(s.flops.ffn, ffnPerScale(e, s.tokens, e.rowsPerSample * batch), `batch 3 scale ${s.scale} FFN`);
    assert.ok(within(f3.total, archTotal(e, batch).total, 0.01), `batch 3 total ${f3.total} vs ${archTotal(e, batch).total}`);
  });
}

test('FLOPs: the architecture count of the tiny full graph, spelled out', () => {
  // C 64, depth 2, V 4096, Cvae 32 (var_tiny_meta.json): per token 2·24·64² + 2·32·64 + 2·64·4096 = 724,992 (679 tokens
  // use word_embed, 680 the rest), attention 2·4·64·Σ t_s·kv_s with Σ t_s·kv_s = 286,434, AdaLN 2·2·64·384 + 2·64·128.
  const { tokens, kv } = layoutOf(VAR_PATCH_NUMS_README);
  assert.strictEqual(tokens.reduce((a, t, k) => a + t * kv[k], 0), 286434);
  const want = 680 * (2 * 24 * 64 * 64 + 2 * 64 * 4096) + 679 * 2 * 32 * 64 + 2 * 4 * 64 * 286434 + (2 * 2 * 64 * 384 + 2 * 64 * 128);
  const e = varFixtures()[0];
  assert.strictEqual(archTotal(e, 1).total, want);
  const got = inspectModel(loadModel(e.file), e.file).flops.total;
  assert.ok(within(got, want, 0.01), `${got} vs ${want}`);
});
