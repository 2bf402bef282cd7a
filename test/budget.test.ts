// Issue 11, item 5: the budget means what the user pays, the MoE scales' FFN FLOPs including their routers, and the
// report says when a model costs more than the dense one or changes its activations a lot. The router FLOPs are
// recomputed here from the architecture (2·(D·width + width·E) per token per layer: two MatMuls) and the token counts
// of VAR's layout, independently of the code under test.
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { convert, ConversionReport } from '../src/pipeline';
import { fixture, layoutOf, rmDir, tinyMeta, tmpDir } from './helpers/fixtures';

const MODEL = fixture('var_tiny_full.onnx');
const D = tinyMeta.C, H = 4 * tinyMeta.C, E = 4, WIDTH = 32, LAYERS = tinyMeta.depth;
const ROUTER_PER_TOKEN = LAYERS * 2 * (D * WIDTH + WIDTH * E);
const FFN_PER_TOKEN = LAYERS * 4 * D * H;
const SHARE = ROUTER_PER_TOKEN / FFN_PER_TOKEN;
const BASE = { experts: E, fromScale: 8, seed: 0, activation: 'relu' as const, clusterBy: 'activations' as const, routerWidth: WIDTH, routerEpochs: 3, routerTarget: 'sqrt' as const, synthSamples: 4, maxTokens: 65536 };

let dir = '';
before(() => {
  dir = tmpDir('budget');
});
after(() => rmDir(dir));

const run = (name: string, o: Partial<Omit<typeof BASE, 'activation'>> & { budget?: number; activation?: 'relu' | 'keep'; repair?: boolean }) => convert(MODEL, { ...BASE, ...o, output: path.join(dir, `${name}.onnx`) });

function moeSpend(r: ConversionReport): number {
  const m = r.scales.filter((s) => s.moe);
  return m.reduce((a, s) => a + s.ffnFlopsMoe, 0) / m.reduce((a, s) => a + s.ffnFlopsDense, 0);
}

test('the budget counts the routers: the MoE scales spend it with the routers, the experts get the rest', async () => {
  const r = await run('b06', { budget: 0.6 });
  const { tokens } = layoutOf(tinyMeta.patch_nums);
  for (const s of r.scales) {
    assert.equal(s.routerFlops, ROUTER_PER_TOKEN * tokens[s.scale - 1], `scale ${s.scale}: router FLOPs`);
    assert.equal(s.ffnFlopsDense, FFN_PER_TOKEN * tokens[s.scale - 1], `scale ${s.scale}: dense FFN FLOPs`);
  }
  const spent = moeSpend(r);
  assert.ok(spent <= 0.6 + 1e-9 && spent >= 0.6 - 0.025, `spent ${spent}`);
  assert.ok(Math.abs(r.totals.moeScalesBudgetSpent! - spent) < 1e-12);
  // The experts' token-weighted active fraction is the budget less the routers' share.
  const m = r.scales.filter((s) => s.moe);
  const active = m.reduce((a, s) => a + s.tokens * s.activeFraction!, 0) / m.reduce((a, s) => a + s.tokens, 0);
  assert.ok(Math.abs(active - (spent - SHARE)) < 1e-9, `experts ${active} + routers ${SHARE} = ${spent}`);
  assert.match(r.passes.find((p) => p.name === 'thresholds')!.summary, /routers included \(reached 0\.\d{3}: experts 0\.\d{3} \+ routers 0\.\d{3}\)/);
  // The whole model: dense total less the dense FFN plus the MoE FFN.
  assert.ok(Math.abs(r.totals.flopsDense - r.totals.flopsMoe - (r.totals.ffnFlopsDense - r.totals.ffnFlopsMoe)) < 1);
});

test('a budget that cannot be met says so, with what was reached', async () => {
  const r = await run('b005', { budget: 0.05 });
  const w = r.warnings.find((x) => x.startsWith('--budget 0.05 cannot be met'));
  assert.ok(w, r.warnings.join('\n'));
  const reached = Number(/can spend is (\d\.\d+)/.exec(w!)![1]);
  assert.ok(Math.abs(reached - r.totals.moeScalesBudgetSpent!) < 5e-4, `${reached} vs ${r.totals.moeScalesBudgetSpent}`);
  // At least one expert per token (1/E) and the routers.
  assert.ok(reached >= 1 / E + SHARE - 1e-3, `${reached}`);
});

test('models that cost more than the dense one warn, per scale and in total', async () => {
  const r = await run('b1', { budget: 1 });
  // Scales before --from-scale run every expert and the routers: more than dense.
  const perScale = r.warnings.find((x) => x.startsWith("the MoE model's FFNs cost more than the dense model's on scales 1–7"));
  assert.ok(perScale, r.warnings.join('\n'));
  assert.match(perScale!, new RegExp(`1–7: ${(100 * (1 + SHARE)).toFixed(1)}%`));
  const total = r.warnings.find((x) => x.startsWith('the converted model costs more than the dense one in total'));
  assert.ok(total, r.warnings.join('\n'));
  assert.ok(r.totals.ffnFlopsMoe > r.totals.ffnFlopsDense);
});

test('a large activation change warns and names --activation keep; keeping the activation, or repairing the experts, does not', async () => {
  // Unrepaired ReLU experts (the repair, on by default for a GELU model with a budget, fits them to the GELU FFN).
  const relu = await run('relu', { budget: 0.6, repair: false });
  const w = relu.warnings.find((x) => /changes the FFN outputs by/.test(x));
  assert.ok(w, relu.warnings.join('\n'));
  assert.match(w!, /--activation keep/);
  assert.ok(relu.layers.every((l) => l.relufyRelChange! > 0.1), 'the tiny GELU model changes by more than 10% per layer');
  const keep = await run('keep', { budget: 0.6, activation: 'keep' });
  assert.ok(!keep.warnings.some((x) => /changes the FFN outputs by/.test(x)), keep.warnings.join('\n'));
  const repaired = await run('repaired', { budget: 0.6 });
  assert.equal(repaired.options.repair, true);
  assert.ok(!repaired.warnings.some((x) => /changes the FFN outputs by/.test(x)), repaired.warnings.join('\n'));
});
