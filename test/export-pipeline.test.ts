// The exporter (python/moefy_export) against VAR itself: small VARs with random weights, saved as plain state_dicts
// like the published checkpoints, with the real VQVAE architecture (ch 160, random weights), exported and checked
// by python/checks/check_pipeline.py, which runs the graphs in ONNX Runtime next to VAR's own PyTorch code and prints
// the measured errors; the assertions are here. One VQVAE (one decoder export) serves every pipeline (--vae-from).
import { test, before, after } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rmDir, runCli, tmpDir } from './helpers/fixtures';
import { runCheck, runExporter, VAR_CODE } from './helpers/python-export';

const PATCH_512 = '1,2,3,4,6,9,13,18,24,32';
/** float32: ONNX Runtime and PyTorch differ only in summation order (measured 2e-7 full, 1.8e-6 chain at depth 2). */
const TOL32 = 1e-4;
/** float16 graphs against the float32 VAR: float16 keeps 11 significant bits, so rounding the logits alone costs up
 * to 4.9e-4 of their largest magnitude (measured 5.3e-4 full, 5.5-6.2e-4 per scale at depth 2). */
const TOL16 = 2e-3;

let dir = '';
let ckpt = '';
let vae = '';
let base = ''; // the TorchScript float32 pipeline: its VQVAE graphs serve the others

function exportOk(args: string[]): string {
  const r = runExporter(['--var-code', VAR_CODE, ...args]);
  assert.strictEqual(r.status, 0, `exporter failed:\n${r.stderr.slice(-3000)}`);
  return r.stderr;
}

function compare(t: { diagnostic(m: string): void }, pipeline: string, extra: string[] = [], ck = ckpt): Record<string, any> {
  const m = runCheck(['compare', '--var-code', VAR_CODE, '--ckpt', ck, '--vae', vae, '--pipeline', pipeline, ...extra]);
  t.diagnostic(JSON.stringify(m)); // the measured errors, for the README
  return m;
}

function assertWeightsOnce(m: Record<string, any>): void {
  const w = m.weights;
  assert.deepStrictEqual(w.locations, ['transformer.data'], 'both graphs keep their weights in transformer.data');
  assert.ok(w.aligned, 'every tensor 64-byte aligned');
  assert.ok(w.stepBytesInFull >= 0.9 * w.stepBytes, `the step graph's weights are the full graph's: ${JSON.stringify(w)}`);
  assert.ok(w.fileBytes < w.fullBytes + (w.stepBytes - w.stepBytesInFull) + 64 * 1024, `stored once: ${JSON.stringify(w)}`);
}

function assertMatchesVar(m: Record<string, any>, tol: number, scales = 10): void {
  assert.deepStrictEqual(m.manifestMismatch, [], 'the manifest describes the checkpoint');
  assert.ok(m.logitsMax > 0.01, `logits not trivially small: ${m.logitsMax}`);
  assert.ok(m.full <= tol, `full graph vs VAR.forward: ${m.full}`);
  assert.ok(m.fullNullClass <= tol, `full graph vs VAR.forward, null class: ${m.fullNullClass}`);
  assert.ok(m.labelEffect > 100 * tol, `the label changes the logits (${m.labelEffect}): the checks can see it`);
  assert.deepStrictEqual(m.randomOps, [], 'no label dropout in the graphs: no random ops');
  assert.strictEqual(m.fullRepeat, 0, 'the same feeds give the same logits');
  assert.strictEqual(m.chain.length, scales);
  m.chain.forEach((e: number, k: number) => assert.ok(e <= tol, `step chain vs autoregressive_infer_cfg, scale ${k + 1}: ${e}`));
  assert.ok(m.fhat <= 1e-5, `f_hat from the VQ graphs vs VAR's: ${m.fhat}`);
}

function assertInspected(pipeline: string, depth: number, patchNums?: string): void {
  for (const [file, kind] of [['var_full.onnx', 'full'], ['var_step.onnx', 'step']] as const) {
    const args = ['inspect', path.join(pipeline, file), '--json', ...(patchNums ? ['--patch-nums', patchNums] : [])];
    const r = runCli(args);
    assert.strictEqual(r.status, 0, `moefy inspect ${file}: ${r.stderr}`);
    const rep = JSON.parse(r.stdout);
    assert.strictEqual(rep.graph.kind, kind, file);
    assert.strictEqual(rep.blocks.length, depth, `${file}: every block found`);
    for (const b of rep.blocks) assert.strictEqual(b.activation, 'gelu_tanh', `${file} block ${b.index}: its FFN recognised`);
  }
}

before(() => {
  dir = tmpDir('export');
  runCheck(['checkpoints', '--var-code', VAR_CODE, '--depth', '2', '--seed', '1', '-o', dir]);
  ckpt = path.join(dir, 'var.pth');
  vae = path.join(dir, 'vae.pth');
  base = path.join(dir, 'ts32');
});

after(() => rmDir(dir));

test('export: TorchScript float32 from checkpoints equals VAR (forward, sampling loop, image), weights stored once', { timeout: 600_000 }, (t) => {
  const log = exportOk(['--ckpt', ckpt, '--vae', vae, '-o', base]);
  const stages = ['load VAR and its VQVAE', 'export var_full.onnx', "pack var_full.onnx's weights", 'export var_step.onnx',
    "pack var_step.onnx's weights", 'export 10 VQ next-scale graphs', 'export vqvae_decoder.onnx', 'wrote'];
  let at = -1;
  for (const s of stages) {
    const i = log.indexOf(`moefy_export: ${s}`);
    assert.ok(i > at, `stage line '${s}' in order:\n${log}`);
    at = i;
  }
  assert.match(log, /moefy_export: export var_full\.onnx: \d+\.\d s/);
  for (const line of log.trimEnd().split('\n')) assert.match(line, /^moefy_export: /, 'only the stage lines on stderr');
  const manifest = JSON.parse(fs.readFileSync(path.join(base, 'moefy-pipeline.json'), 'utf8'));
  for (const f of [manifest.files.full, manifest.files.step, ...manifest.files.vqNextScale, manifest.files.decoder]) {
    assert.ok(fs.existsSync(path.join(base, f)), `${f} exists`);
  }
  assert.deepStrictEqual(fs.readdirSync(path.dirname(base)).filter((n) => n.includes('moefy-export')), [], 'no temporary folder left');
  const m = compare(t, base, ['--image']);
  assertMatchesVar(m, TOL32);
  assert.strictEqual(m.cacheLength, 680);
  assert.ok(m.image <= 1e-4, `decoder on the chain's f_hat vs VAR's image: ${m.image}`);
  assert.ok(m.imageStd > 0.01, `the image is not flat (${m.imageStd})`);
  assertWeightsOnce(m);
  assertInspected(base, 2);
});

test('export: weights written one file per tensor (TorchScript above 2 GB) pack into transformer.data unchanged; odd sizes aligned, repeats once', () => {
  const r = runCheck(['repack', '--pipeline', base, '-o', path.join(dir, 'repack')]);
  assert.ok(r.perTensorFiles > 10, `one file per tensor: ${r.perTensorFiles}`);
  assert.deepStrictEqual(r.packedFiles, ['transformer.data', 'var_full.onnx']);
  assert.strictEqual(r.maxDiff, 0, 'the packed graph gives the same logits');
  // 1001 and 1003 floats, then the first again: offsets 0, 4032 (4004 rounded up to 64), and 0 once more
  assert.deepStrictEqual(r.oddOffsets, [0, 4032, 0], 'odd sizes aligned to 64 bytes, the repeated tensor stored once');
  assert.strictEqual(r.oddFileBytes, 4032 + 4012);
  assert.ok(r.oddExact, 'the packed odd graph gives its tensors back exactly');
});

test('export: dynamo float32 equals VAR', { timeout: 600_000 }, (t) => {
  const out = path.join(dir, 'dynamo32');
  exportOk(['--ckpt', ckpt, '--vae', vae, '--dynamo', '--vae-from', base, '-o', out]);
  const m = compare(t, out);
  assertMatchesVar(m, TOL32);
  assertWeightsOnce(m);
  assertInspected(out, 2);
});

test('export: --half (float16 transformer) equals float32 VAR within float16 rounding', { timeout: 600_000 }, (t) => {
  const out = path.join(dir, 'ts16');
  exportOk(['--ckpt', ckpt, '--vae', vae, '--half', '--vae-from', base, '-o', out]);
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'moefy-pipeline.json'), 'utf8'));
  assert.strictEqual(manifest.var.dtype, 'float16');
  const m = compare(t, out);
  assertMatchesVar(m, TOL16);
  assert.ok(m.full > 1e-6, `the graph is float16 (${m.full})`);
  assertWeightsOnce(m);
  assertInspected(out, 2);
});

test('export: the 512-px layout with shared AdaLN (VAR-d36-s style) equals VAR', { timeout: 600_000 }, (t) => {
  const ck = path.join(dir, 'saln512');
  runCheck(['checkpoints', '--var-code', VAR_CODE, '--depth', '2', '--seed', '2', '--patch-nums', PATCH_512, '--shared-aln', '--vae', vae, '-o', ck]);
  const out = path.join(dir, 'ts32-512-saln');
  const log = exportOk(['--ckpt', path.join(ck, 'var.pth'), '--vae', vae, '--vae-from', base, '-o', out]);
  assert.match(log, /take vqvae_decoder\.onnx from/, 'the decoder is reused, the VQ graphs of the other layout are not');
  assert.match(log, /export 10 VQ next-scale graphs/);
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'moefy-pipeline.json'), 'utf8'));
  assert.deepStrictEqual(manifest.var.patchNums, PATCH_512.split(',').map(Number), 'layout read from the checkpoint');
  assert.strictEqual(manifest.var.sharedAln, true, 'shared AdaLN read from the checkpoint');
  const m = compare(t, out, ['--patch-nums', PATCH_512, '--shared-aln'], path.join(ck, 'var.pth'));
  assertMatchesVar(m, TOL32);
  assert.strictEqual(m.cacheLength, 2240);
  assertInspected(out, 2, PATCH_512);
});

test('export: --random is seeded (same seed, same bytes); an earlier pipeline folder as -o is replaced', { timeout: 600_000 }, () => {
  const run = (seed: string, out: string) => exportOk(['--random', '--depth', '1', '--seed', seed, '--vae', vae, '--vae-from', base, '-o', out, '-q']);
  const [a, b] = [path.join(dir, 'random-a'), path.join(dir, 'random-b')];
  run('7', a);
  run('7', b);
  const bytes = (d: string, f: string) => fs.readFileSync(path.join(d, f));
  for (const f of ['var_full.onnx', 'var_step.onnx', 'transformer.data', 'moefy-pipeline.json']) {
    assert.ok(bytes(a, f).equals(bytes(b, f)), `${f}: same seed, same bytes`);
  }
  run('8', a);
  assert.ok(!bytes(a, 'transformer.data').equals(bytes(b, 'transformer.data')), 'the folder now holds the seed-8 weights');
  assert.strictEqual(JSON.parse(bytes(a, 'moefy-pipeline.json').toString()).source.random.seed, 8);
  assert.deepStrictEqual(fs.readdirSync(dir).filter((n) => n.startsWith('.')), [], 'no temporary or previous folder left');
});
