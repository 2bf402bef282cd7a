// --repair on the command line: on by default for a GELU model converted for a budget, off with --no-repair, off
// with given thresholds (threshold 0 stays the ReLUfied dense model), --repair-epochs implying it; bad values are one
// clear line with nothing written. The model is the tiny GELU VAR export (fast: 1 router epoch).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CONVERT_DEFAULTS } from '../src/convert-options';
import { fixture, rmDir, runCli, tmpDir } from './helpers/fixtures';

const FAST = ['--router-epochs', '1', '--router-width', '16', '--synth-samples', '2', '--experts', '8', '--from-scale', '8'];

test('--repair: defaults, --no-repair, --repair-epochs, and bad values', () => {
  const dir = tmpDir('cli-repair');
  try {
    const model = fixture('var_tiny_full.onnx');
    const run = (name: string, extra: string[]) => {
      const out = path.join(dir, `${name}.onnx`);
      const r = runCli([model, ...FAST, ...extra, '-o', out]);
      assert.equal(r.status, 0, r.stderr);
      return { log: r.stdout, report: JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8')) };
    };
    const byDefault = run('default', ['--budget', '0.5']);
    assert.equal(byDefault.report.options.repair, true);
    // The default: closed form, then up to CONVERT_DEFAULTS.repairEpochs epochs of gradient fit.
    assert.match(byDefault.log, new RegExp(`^repair .*closed form \\+ up to ${CONVERT_DEFAULTS.repairEpochs} epochs\\)`, 'm'));
    assert.equal(byDefault.report.options.repairEpochs, CONVERT_DEFAULTS.repairEpochs);
    const closed = run('closed', ['--budget', '0.5', '--repair-epochs', '0']);
    assert.equal(closed.report.options.repair, true);
    assert.match(closed.log, /^repair .*\(closed form\)/m);
    assert.ok(byDefault.report.layers.every((l: { repair: { heldOutRelErrAfter: number; heldOutRelErrBefore: number } }) => l.repair.heldOutRelErrAfter < l.repair.heldOutRelErrBefore));
    const off = run('off', ['--budget', '0.5', '--no-repair']);
    assert.equal(off.report.options.repair, false);
    assert.ok(off.report.layers.every((l: { repair: unknown }) => l.repair === null));
    assert.doesNotMatch(off.log, /^repair /m);
    assert.equal(run('given', ['--threshold', '0']).report.options.repair, false);
    const epochs = run('epochs', ['--threshold', '0.3', '--repair-epochs', '2']);
    assert.equal(epochs.report.options.repair, true);
    assert.equal(epochs.report.options.repairEpochs, 2);
    for (const [extra, want] of [
      [['--repair-epochs', '-1'], /--repair-epochs must be a whole number ≥ 0/],
      [['--repair-epochs', '2', '--no-repair'], /--repair-epochs needs the repair/],
    ] as [string[], RegExp][]) {
      const out = path.join(dir, 'bad.onnx');
      const r = runCli([model, ...FAST, ...extra, '-o', out]);
      assert.equal(r.status, 1, extra.join(' '));
      assert.deepEqual(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, want);
      assert.ok(!fs.existsSync(out) && !fs.existsSync(path.join(dir, 'bad.json')));
    }
  } finally {
    rmDir(dir);
  }
});
