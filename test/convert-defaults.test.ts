// One set of defaults: the library's convert() with only the two required options and the CLI with only the two
// required flags write the same bytes (before src/convert-options.ts the library trained routers on the raw norm).
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CONVERT_DEFAULTS } from '../src/convert-options';
import { convert } from '../src/pipeline';
import { fixture, repoRoot, rmDir, runCli, tmpDir } from './helpers/fixtures';

test('convert(model, {experts, fromScale}) and `moefy model --experts --from-scale` give byte-identical models', async () => {
  const dir = tmpDir('defaults');
  try {
    const model = path.join(repoRoot, 'fixtures', 'small-var.onnx');
    fs.mkdirSync(path.join(dir, 'lib'));
    fs.mkdirSync(path.join(dir, 'cli'));
    // The same file name in both folders: the report names its output.
    const lib = path.join(dir, 'lib', 'small.moe.onnx');
    const cli = path.join(dir, 'cli', 'small.moe.onnx');
    const report = await convert(model, { experts: 4, fromScale: 8, output: lib });
    const r = runCli([model, '--experts', '4', '--from-scale', '8', '-o', cli], { timeoutMs: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /; MoE scales 8…10: 60\.\d% \(budget 60\.0%\)/);
    assert.ok(fs.readFileSync(lib).equals(fs.readFileSync(cli)), 'the .onnx files differ');
    assert.equal(fs.readFileSync(lib.replace(/\.onnx$/, '.json'), 'utf8'), fs.readFileSync(cli.replace(/\.onnx$/, '.json'), 'utf8'));
    // The defaults the report records are the CLI's documented ones (README's option table).
    const o = report.options;
    assert.deepEqual(
      { routerTarget: o.routerTarget, routerEpochs: o.routerEpochs, routerWidth: o.routerWidth, clusterBy: o.clusterBy, activation: o.activation, budget: o.budget, seed: o.seed },
      // small-var has D 64: the router width default D/4 within 16…128 gives 16.
      { routerTarget: 'sqrt', routerEpochs: 25, routerWidth: 16, clusterBy: 'activations', activation: 'relu', budget: 0.6, seed: 0 },
    );
    assert.equal(CONVERT_DEFAULTS.routerTarget, 'sqrt');
  } finally {
    rmDir(dir);
  }
});

test('the summary names the MoE scale a step graph holds', () => {
  const dir = tmpDir('defaults-step');
  try {
    const r = runCli([fixture('var_tiny_step_last_static.onnx'), '--experts', '16', '--from-scale', '8', '-o', path.join(dir, 'step.moe.onnx')], { timeoutMs: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /; MoE scale 10: \d+\.\d% \(budget 60\.0%\)/);
  } finally {
    rmDir(dir);
  }
});
