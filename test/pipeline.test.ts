// The pipeline is its ordered list of stages (src/pipeline.ts): each reads what the conversion's input and the earlier
// stages give, and none changes what it reads (checked by fingerprinting every input of every stage, with repair on).
import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { test } from 'node:test';
import { analyseVar } from '../src/analysis/var-structure';
import { Lendable } from '../src/calib/layer-pool';
import { resolveForModel } from '../src/convert-options';
import { Graph, Node, Value } from '../src/ir/graph';
import { Model } from '../src/ir/model';
import { encodeModel, loadModel } from '../src/onnx/io';
import { STAGES } from '../src/pipeline';
import type { Conversion } from '../src/stages/types';
import { repoRoot } from './helpers/fixtures';
import { FAST } from './helpers/fast';

const SMALL = path.join(repoRoot, 'fixtures', 'small-var.onnx');
const SMALL_CALIB = path.join(repoRoot, 'fixtures', 'small-var-calib');

test('the stages, in data-flow order, each read only what is given before them and give one thing', () => {
  assert.deepEqual(STAGES.map((s) => s.name), ['capture', 'relufy', 'cluster', 'permute', 'routers', 'thresholds', 'repair', 'insert']);
  const given = new Set<string>(['model', 'structure', 'sites', 'recipe']);
  for (const st of STAGES) {
    for (const n of st.needs) assert.ok(given.has(n), `${st.name} reads ${String(n)} before it is given`);
    assert.ok(!given.has(st.gives), `${st.name} gives ${st.gives} again`);
    given.add(st.gives);
  }
});

/** A hash of everything a value holds: typed arrays' bytes, a model's encoding, plain data (the IR inside an analysis is the model's). */
function fingerprint(v: unknown): string {
  const h = createHash('sha256');
  const seen = new Set<unknown>();
  const walk = (x: unknown): void => {
    if (x === null || typeof x !== 'object') return void h.update(`${typeof x}:${String(x)};`);
    if (seen.has(x)) return;
    seen.add(x);
    if (x instanceof Model) return void h.update(encodeModel(x));
    if (x instanceof Graph || x instanceof Node || x instanceof Value) return;
    if (x instanceof Lendable) return walk(x.data);
    if (ArrayBuffer.isView(x)) return void h.update(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
    for (const [k, y] of Object.entries(x)) {
      h.update(`${k}=`);
      walk(y);
    }
  };
  walk(v);
  return h.digest('hex');
}

test('no stage changes what it reads (a conversion with repair, on the small model)', async () => {
  const model = loadModel(SMALL);
  const structure = analyseVar(model);
  const sites = structure.blocks.map((b) => b.ffn!);
  const recipe = resolveForModel({ experts: 4, fromScale: 8, calib: SMALL_CALIB, repair: true, repairEpochs: 1, ...FAST }, {
    D: structure.D, patchNums: structure.layout.patchNums, stepScale: null, ffns: sites.map((s) => ({ block: s.block, H: s.H, activation: s.activation.kind })),
  });
  const flow: Partial<Conversion> = { model, structure, sites, recipe };
  const before = encodeModel(model);
  for (const st of STAGES) {
    const prints = st.needs.map((n: keyof Conversion) => fingerprint(flow[n]));
    (flow as Record<string, unknown>)[st.gives] = st.runs?.(flow) === false ? null : await st.run(flow, () => {});
    st.needs.forEach((n: keyof Conversion, k: number) => assert.equal(fingerprint(flow[n]), prints[k], `${st.name} changed ${String(n)}`));
  }
  assert.ok(flow.repaired, 'the repair ran');
  assert.ok(Buffer.from(encodeModel(model)).equals(Buffer.from(before)), 'the input model is unchanged');
  assert.ok(flow.output!.graph.nodes.some((n) => n.opType === 'DynamicMoE'));
});
