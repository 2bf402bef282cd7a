// The options table (src/convert-options.ts) is the one place an option is declared: the CLI's flags, help and
// checks come from it, the library checks the same way, and the defaults that depend on the model are resolved once.
import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { BUDGET_ROUTING, checkOptions, CONVERT_DEFAULTS, CONVERT_OPTIONS, ConvertOptions, recordedOptions, resolveForModel } from '../src/convert-options';
import { MoefyError } from '../src/errors';
import { runCli } from './helpers/fixtures';

test('every option of the table is a flag of `moefy convert`, with its help and default', () => {
  const help = runCli(['convert', '--help']).stdout.replace(/\s+/g, ' ');
  for (const s of Object.values(CONVERT_OPTIONS)) {
    assert.ok(help.includes(`--${s.flag} `), `--${s.flag} in the help`);
    assert.ok(help.includes(s.describe.replace(/\s+/g, ' ').slice(0, 30)), `--${s.flag}'s help line`);
  }
  assert.match(help, /--router-epochs router training epochs \[number\] \[default: 25\]/);
  // A default that depends on the model or other options is not shown as a flag default.
  assert.doesNotMatch(help, /\[default: 0\.6\]/);
});

test('checks: each value in the flag\'s words; options that exclude each other', () => {
  const base: ConvertOptions = { experts: 4, fromScale: 8 };
  const cases: [Partial<ConvertOptions>, RegExp][] = [
    [{ experts: 0 }, /^--experts must be a whole number ≥ 1 \(got 0\)$/],
    [{ fromScale: 1.5 }, /^--from-scale must be a whole number \(got 1\.5\)$/],
    [{ seed: NaN }, /^--seed must be a whole number ≥ 0 \(the value given is not a number\)$/],
    [{ budget: 0 }, /^--budget must be a number in \(0, 1\] \(got 0\)$/],
    [{ thresholds: [0.2, 1.5] }, /^--threshold value 1\.5 is outside \[0, 1\]$/],
    [{ patchNums: [1, 2.5] }, /^--patch-nums value 2\.5 is outside \[1, ∞\) or not a whole number$/],
    [{ activation: 'gelu' as never }, /^--activation must be one of relu, keep \(got gelu\)$/],
    [{ thresholds: [0.2], budget: 0.5 }, /^give one of --threshold, --tau and --budget, not --threshold and --budget$/],
    [{ repair: false, repairEpochs: 2 }, /^--repair-epochs needs the repair/],
    [{ routing: 'largest' as never }, /^--routing must be one of relative, absolute, topk \(got largest\)$/],
    [{ tau: [0.8], routing: 'absolute' }, /^--tau is DMoE-VAR's relative rule \(threshold = 1 − τ\); it cannot be given with --routing absolute \(give --threshold\)$/],
  ];
  for (const [o, re] of cases) assert.throws(() => checkOptions({ ...base, ...o }), (e: Error) => e instanceof MoefyError && re.test(e.message), JSON.stringify(o));
  checkOptions({ ...base, thresholds: [0, 1], seed: 3, repairEpochs: 0, routing: 'topk' });
  checkOptions({ ...base, tau: [0.8], routing: 'relative' });
});

const facts = (activation: string, H = 512) => ({ D: 128, patchNums: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], stepScale: null, ffns: [0, 1].map((block) => ({ block, H, activation })) });

test('defaults resolved for the model: repair, its epochs, the router width, the budget', () => {
  const gelu = resolveForModel({ experts: 8, fromScale: 8 }, facts('gelu_tanh'));
  assert.deepEqual([gelu.repair, gelu.repairEpochs, gelu.routerWidth, gelu.budget], [true, CONVERT_DEFAULTS.repairEpochs, 32, CONVERT_DEFAULTS.budget]);
  // A larger FFN: the closed form only.
  assert.equal(resolveForModel({ experts: 8, fromScale: 8 }, facts('gelu_tanh', 4096)).repairEpochs, 0);
  // ReLU models, or given thresholds: no repair, no budget.
  assert.equal(resolveForModel({ experts: 8, fromScale: 8 }, facts('relu')).repair, false);
  const given = resolveForModel({ experts: 8, fromScale: 8, tau: [0.5] }, facts('gelu_tanh'));
  assert.deepEqual([given.repair, given.repairEpochs, given.budget], [false, 0, null]);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8, routerWidth: 7 }, facts('relu')).routerWidth, 7);
  // The routing rule: the measured best for a budget, DMoE-VAR's relative rule for given thresholds, or as asked.
  assert.equal(resolveForModel({ experts: 8, fromScale: 8 }, facts('relu')).routing, BUDGET_ROUTING);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8, thresholds: [0.2] }, facts('relu')).routing, 'relative');
  assert.equal(resolveForModel({ experts: 8, fromScale: 8, routing: 'topk' }, facts('relu')).routing, 'topk');
  // skip_bias: with a closed-form-only repair (a GELU model with H above 1024, or --repair-epochs 0); not after the
  // gradient epochs, not on a ReLU model unless asked (then fitted alone).
  assert.equal(resolveForModel({ experts: 8, fromScale: 8 }, facts('gelu_tanh', 4096)).skipBias, true);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8, repairEpochs: 0 }, facts('gelu_tanh')).skipBias, true);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8 }, facts('gelu_tanh')).skipBias, false);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8, repairEpochs: 0, skipBias: false }, facts('gelu_tanh')).skipBias, false);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8 }, facts('relu')).skipBias, false);
  assert.deepEqual([resolveForModel({ experts: 8, fromScale: 8, skipBias: true }, facts('relu'))].map((r) => [r.repair, r.skipBias])[0], [false, true]);
  assert.equal(resolveForModel({ experts: 8, fromScale: 8, tau: [0.5] }, facts('gelu_tanh')).skipBias, false);
  assert.throws(() => resolveForModel({ experts: 3, fromScale: 8 }, facts('relu')), /--experts 3 does not divide the FFN hidden size H = 512 \(block 0\)/);
  assert.throws(() => resolveForModel({ experts: 8, fromScale: 11 }, facts('relu')), /--from-scale 11 is out of range: the model has scales 1…10/);
  assert.throws(() => resolveForModel({ experts: 8, fromScale: 8, thresholds: [0.1, 0.2] }, facts('relu')), /--threshold has 2 values; scales 8…10 need 3/);
  assert.throws(() => resolveForModel({ experts: 8, fromScale: 8 }, { ...facts('relu'), stepScale: 5 }), /computes scale 5, before --from-scale 8/);
});

test('the report records the resolved options in the table\'s order', () => {
  const r = resolveForModel({ experts: 8, fromScale: 8, calib: '/data/calib-set', kvPrefix: ['a.onnx'], maxTokens: 100 }, facts('relu'));
  assert.deepEqual(recordedOptions(r), {
    experts: 8, fromScale: 8, activation: 'relu', clusterBy: 'activations', seed: 0, thresholds: null, tau: null, budget: 0.6, routing: BUDGET_ROUTING, calib: 'calib-set',
    routerWidth: 32, routerEpochs: 25, routerTarget: 'sqrt', repair: false, repairEpochs: 0, skipBias: false, patchNums: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
  });
  assert.deepEqual(Object.keys(recordedOptions(r)), ['experts', 'fromScale', 'activation', 'clusterBy', 'seed', 'thresholds', 'tau', 'budget', 'routing', 'calib', 'routerWidth', 'routerEpochs', 'routerTarget', 'repair', 'repairEpochs', 'skipBias', 'patchNums']);
});
