// Issue 2, item 1: `moefy inspect` understands every model in ../shared/fixtures. Expectations come from the
// fixtures' README files and var_tiny_meta.json (see test/helpers/fixtures.ts), never from moefy's own analysis.
import { test } from 'node:test';
import assert from 'node:assert';
import * as path from 'node:path';
import { loadModel, saveModel } from '../src/onnx/io';
import { inspectModel, InspectReport } from '../src/inspect';
import { MoefyError } from '../src/errors';
import { generateInputs, generateVar, VarGenOptions } from '../fixtures/generate';
import { writeTensorSet } from '../src/io';
import { convert } from '../src/pipeline';
import { FAST } from './helpers/fast';
import {
  allOnnxFiles, FixtureExpectation, nonVarFixtures, rmDir, runCli, tinyMeta, tmpDir, TRAINED_ARCH, VAR_L_README, VAR_PATCH_NUMS_README, varFixtures,
} from './helpers/fixtures';

function checkReport(r: InspectReport, e: FixtureExpectation): void {
  const what = path.basename(e.file);
  assert.strictEqual(r.blocks.length, e.depth, `${what}: number of blocks`);
  assert.strictEqual(r.D, e.D, `${what}: D`);
  assert.strictEqual(r.H, e.H, `${what}: H`);
  r.blocks.forEach((b, k) => {
    assert.strictEqual(b.index, k, `${what}: block order`);
    assert.strictEqual(b.D, e.D, `${what}: block ${k} D`);
    assert.strictEqual(b.H, e.H, `${what}: block ${k} H`);
    assert.strictEqual(b.activation, e.activation, `${what}: block ${k} activation`);
    // fc1 [D,H] + bias H, fc2 [H,D] + bias D.
    assert.strictEqual(b.ffnParams, 2 * e.D * e.H + e.H + e.D, `${what}: block ${k} FFN parameters`);
    assert.strictEqual(b.moe, null, `${what}: a dense model has no MoE`);
  });
  assert.strictEqual(r.graph.kind, e.kind, `${what}: graph kind`);
  assert.strictEqual(r.graph.stepScale, e.stepScale, `${what}: step scale`);
  assert.strictEqual(r.graph.rowsPerSample, e.rowsPerSample, `${what}: rows per sample`);
  assert.deepStrictEqual(r.graph.patchNums, VAR_PATCH_NUMS_README, `${what}: patch layout`);
  assert.strictEqual(r.graph.L, VAR_L_README, `${what}: L`);
  // The logits width is known whenever the logits output declares a static last axis.
  const logits = r.outputs.find((o) => /logit/.test(o.name));
  assert.ok(logits, `${what}: a logits output`);
  const last = logits.shape[logits.shape.length - 1];
  if (typeof last === 'number') assert.strictEqual(r.vocab, e.V, `${what}: vocabulary`);
  assert.ok(r.vocab === null || r.vocab === e.V, `${what}: vocabulary ${r.vocab}`);
  assert.strictEqual(r.moe, null);
  // Scales reported: all 10 for full graphs and dynamic step graphs, only its own for a static step graph.
  const want = e.stepScale === null ? VAR_PATCH_NUMS_README.map((_, k) => k + 1) : [e.stepScale];
  assert.deepStrictEqual(r.scales.map((s) => s.scale), want, `${what}: scales`);
  for (const s of r.scales) {
    assert.strictEqual(s.patch, VAR_PATCH_NUMS_README[s.scale - 1]);
    assert.strictEqual(s.tokens, s.patch * s.patch);
  }
}

test('inspect: the fixture lists cover every .onnx file in ../shared/fixtures', () => {
  const listed = [...varFixtures().map((e) => e.file), ...nonVarFixtures()].sort();
  assert.deepStrictEqual(allOnnxFiles(), listed);
});

test('inspect --json (CLI child process) on the tiny full graph and the trained ReLU model', () => {
  for (const e of varFixtures().filter((x) => /var_tiny_full\.onnx|var_relu_h001_tf|var_step_s9/.test(x.file))) {
    const r = runCli(['inspect', e.file, '--json']);
    assert.strictEqual(r.status, 0, r.stderr);
    assert.strictEqual(r.stderr, '');
    const report = JSON.parse(r.stdout) as InspectReport;
    assert.strictEqual(report.file, e.file);
    checkReport(report, e);
  }
});

test('inspect (text) prints the blocks and the scale table', () => {
  const e = varFixtures()[0];
  const r = runCli(['inspect', e.file]);
  assert.strictEqual(r.status, 0, r.stderr);
  assert.match(r.stdout, /full sequence \(teacher forcing\), L = 680/);
  assert.match(r.stdout, /D 64, H 256/);
  assert.strictEqual((r.stdout.match(/gelu_tanh/g) ?? []).length, tinyMeta.depth);
});

for (const e of varFixtures()) {
  test(`inspectModel: ${path.relative(path.dirname(path.dirname(e.file)), e.file)}`, () => {
    const r = inspectModel(loadModel(e.file), e.file);
    checkReport(r, e);
  });
}

test('inspect: parameter counts agree with the meta file and the trained README', () => {
  // var_tiny_meta.json's params counts the PyTorch module. The export folds the qkv bias cat(q_bias, 0, v_bias) into one
  // [3C] initializer, adding the C zero k-bias entries per block (research doc 5.1); nothing else may differ.
  const full = inspectModel(loadModel(varFixtures()[0].file), 'x');
  assert.strictEqual(full.parameters, (tinyMeta as unknown as { params: number }).params + tinyMeta.depth * tinyMeta.C);
  // Trained README: "1.38 M parameters" (rounded to 10k).
  const t = inspectModel(loadModel(varFixtures()[5].file), 'x');
  assert.ok(Math.abs(t.parameters - 1.38e6) <= 5e3 + TRAINED_ARCH.depth * TRAINED_ARCH.C, `trained parameters ${t.parameters}`);
});

test('inspect: the non-VAR graphs of gelu_steps are rejected with "not a VAR"', () => {
  for (const f of nonVarFixtures()) {
    const m = loadModel(f);
    assert.throws(() => inspectModel(m, f), (err: unknown) => err instanceof MoefyError && /not a VAR/.test(err.message), path.basename(f));
  }
});

test('inspect: --patch-nums that do not sum to the sequence length are refused; the default layout is reported', () => {
  const f = varFixtures()[0].file;
  const bad = runCli(['inspect', f, '--json', '--patch-nums', '1,2,3']);
  assert.notStrictEqual(bad.status, 0);
  assert.match(bad.stderr, /680/);
  const ok = runCli(['inspect', f, '--json', '--patch-nums', VAR_PATCH_NUMS_README.join(',')]);
  assert.strictEqual(ok.status, 0, ok.stderr);
  assert.strictEqual((JSON.parse(ok.stdout) as InspectReport).graph.layoutSource, 'override');
});

test('a model converted with its own --patch-nums is read with that layout (its DynamicMoE nodes carry it): inspect, bench and eval need no --patch-nums', async () => {
  const dir = tmpDir('inspect-layout');
  try {
    const opts: VarGenOptions = { depth: 2, width: 64, ffnHidden: 256, vocab: 128, numClasses: 10, patchNums: [1, 2, 3, 4], seed: 5, activation: 'relu' };
    const dense = path.join(dir, 'm.onnx');
    saveModel(generateVar(opts), dense);
    const moe = path.join(dir, 'm.moe.onnx');
    await convert(dense, { ...FAST, experts: 8, fromScale: 3, patchNums: opts.patchNums, output: moe });
    // The dense export has no layout of its own: the default (680 tokens) does not fit its 30.
    assert.throws(() => inspectModel(loadModel(dense), dense), /30 tokens.*pass --patch-nums/);
    const r = inspectModel(loadModel(moe), moe);
    assert.deepStrictEqual(r.graph.patchNums, [1, 2, 3, 4]);
    assert.strictEqual(r.graph.layoutSource, 'model');
    assert.deepStrictEqual(r.scales.map((s) => s.tokens), [1, 4, 9, 16]);
    const cli = runCli(['inspect', moe, '--json']);
    assert.strictEqual(cli.status, 0, cli.stderr);
    assert.strictEqual((JSON.parse(cli.stdout) as InspectReport).graph.layoutSource, 'model');
    // bench and eval read the dense export with the converted model's layout.
    const bench = runCli(['bench', dense, moe, '--reps', '1', '--json']);
    assert.strictEqual(bench.status, 0, bench.stderr);
    assert.ok((JSON.parse(bench.stdout) as { ratio: number }).ratio > 0);
    const inputs = path.join(dir, 'inputs.npz');
    await writeTensorSet(inputs, generateInputs(opts, 2, 9) as never);
    const ev = runCli(['eval', dense, moe, '--inputs', inputs, '--threshold', '0', '--json']);
    assert.strictEqual(ev.status, 0, ev.stderr);
    const rep = JSON.parse(ev.stdout) as { scales: { tokens: number; kl: number }[] };
    assert.deepStrictEqual(rep.scales.map((x) => x.tokens), [1, 4, 9, 16]);
    // A ReLU export at threshold 0: the MoE model is the dense one on every scale.
    assert.ok(rep.scales.every((x) => x.kl < 1e-6), `KL per scale ${rep.scales.map((x) => x.kl).join(', ')}`);
  } finally {
    rmDir(dir);
  }
});
