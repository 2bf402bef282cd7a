// --repair, --routing and --skip-bias on the command line: repair on by default for a GELU model converted for a
// budget, off with --no-repair, off with given thresholds (threshold 0 stays the ReLUfied dense model), --repair-epochs
// implying it; the routing rule a --budget conversion takes by default, relative with given thresholds, a rule asked
// for reaching the report, the stage line and the model's nodes; skip_bias with a closed-form repair by default, or
// fitted alone without the repair; bad values are one clear line with nothing written. The model is the tiny GELU
// VAR export (fast: 1 router epoch).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { analyseVar } from '../src/analysis/var-structure';
import { BUDGET_ROUTING, CONVERT_DEFAULTS } from '../src/convert-options';
import { loadModel } from '../src/onnx/io';
import { fixture, rmDir, runCli, tmpDir } from './helpers/fixtures';

const FAST = ['--router-epochs', '1', '--router-width', '16', '--synth-samples', '2', '--experts', '8', '--from-scale', '8'];
const MODEL = fixture('var_tiny_full.onnx');

/** Converts the tiny model into dir with extra flags: the log, the report and the DynamicMoE sites. */
function converter(dir: string) {
  return (name: string, extra: string[]) => {
    const out = path.join(dir, `${name}.onnx`);
    const r = runCli([MODEL, ...FAST, ...extra, '-o', out]);
    assert.equal(r.status, 0, r.stderr);
    return { log: r.stdout, report: JSON.parse(fs.readFileSync(path.join(dir, `${name}.json`), 'utf8')), nodes: analyseVar(loadModel(out)).blocks.map((b) => b.moe!) };
  };
}

/** Each flag set fails with exit 1 and the message, on stderr's one line, writing nothing. */
function refused(dir: string, cases: [string[], RegExp][]): void {
  for (const [extra, want] of cases) {
    const out = path.join(dir, 'bad.onnx');
    const r = runCli([MODEL, ...FAST, ...extra, '-o', out]);
    assert.equal(r.status, 1, extra.join(' '));
    assert.deepEqual(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, want);
    assert.ok(!fs.existsSync(out) && !fs.existsSync(path.join(dir, 'bad.json')));
  }
}

test('--repair: defaults, --no-repair, --repair-epochs, and bad values', () => {
  const dir = tmpDir('cli-repair');
  try {
    const run = converter(dir);
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
    refused(dir, [
      [['--repair-epochs', '-1'], /--repair-epochs must be a whole number ≥ 0/],
      [['--repair-epochs', '2', '--no-repair'], /--repair-epochs needs the repair/],
    ]);
  } finally {
    rmDir(dir);
  }
});

test('--routing and --skip-bias: defaults, a rule asked for, the vectors alone, and bad combinations', () => {
  const dir = tmpDir('cli-routing');
  try {
    const run = converter(dir);
    // A budget: the measured best rule; the closed-form repair fits a skip_bias with the experts.
    const byDefault = run('default', ['--budget', '0.5', '--repair-epochs', '0']);
    assert.equal(byDefault.report.options.routing, BUDGET_ROUTING);
    assert.equal(byDefault.report.options.skipBias, true);
    assert.ok(byDefault.nodes.every((n) => n.routing === BUDGET_ROUTING && n.skipBias));
    assert.match(byDefault.log, new RegExp(`^thresholds .* ${BUDGET_ROUTING} thresholds `, 'm'));
    assert.match(byDefault.log, /^repair .*refitted the experts of 2 FFNs and their skip_bias .*\(closed form\)/m);
    // Given thresholds keep DMoE-VAR's relative rule, whose values they are (not written: the attribute's default).
    const given = run('given', ['--threshold', '0.3']);
    assert.equal(given.report.options.routing, 'relative');
    assert.ok(given.nodes.every((n) => n.routing === 'relative' && n.node.attr('routing') === undefined && !n.skipBias));
    const topk = run('topk', ['--budget', '0.5', '--routing', 'topk', '--no-repair']);
    assert.equal(topk.report.options.routing, 'topk');
    assert.match(topk.log, /^thresholds .* topk thresholds [\d.,]+ \(k \d+,\d+,\d+ of 8\)/m);
    assert.ok(topk.nodes.every((n) => n.node.attrString('routing') === 'topk' && !n.skipBias));
    // Without the repair, --skip-bias fits the vectors alone.
    const alone = run('alone', ['--budget', '0.5', '--no-repair', '--skip-bias']);
    assert.deepEqual([alone.report.options.repair, alone.report.options.skipBias], [false, true]);
    assert.match(alone.log, /^repair .*fitted the skipped-expert compensation \(skip_bias\) of 2 FFNs .*experts kept/m);
    assert.ok(alone.nodes.every((n) => n.skipBias));
    const none = run('none', ['--budget', '0.5', '--repair-epochs', '0', '--no-skip-bias']);
    assert.deepEqual([none.report.options.repair, none.report.options.skipBias], [true, false]);
    assert.ok(none.nodes.every((n) => !n.skipBias));
    refused(dir, [
      [['--tau', '0.8', '--routing', 'topk'], /^moefy: --tau is DMoE-VAR's relative rule \(threshold = 1 − τ\); it cannot be given with --routing topk/],
      [['--budget', '0.5', '--routing', 'largest'], /^moefy: Invalid values: Argument: routing, Given: "largest", Choices: "relative", "absolute", "topk"\n$/],
    ]);
  } finally {
    rmDir(dir);
  }
});
