// VAR's signature is the analysis's (src/analysis/var-signature.ts): what each input and output of the real exports
// is for, and no module outside src/analysis matches VAR's names itself.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { test } from 'node:test';
import { Node } from 'ts-morph';
import { analyseVar } from '../src/analysis/var-structure';
import { inputRole, TEACHER_FORCING } from '../src/analysis/var-signature';
import { loadModel } from '../src/onnx/io';
import { fixture, GELU_STEPS, repoRoot } from './helpers/fixtures';
import { srcProject } from './helpers/layering';

const names = (v: { name: string } | null) => v?.name ?? null;

test("the signature of each kind of export: labels, CFG strength, token features, logits, KV cache", () => {
  const cases: [string, { label: string | null; cfg: string | null; tokens: string | null; logits: string; kv: number; kind: string }][] = [
    [fixture('var_tiny_full.onnx'), { label: 'label_B', cfg: null, tokens: 'x_BLCv_wo_first_l', logits: 'logits_BLV', kv: 0, kind: 'full' }],
    [fixture('var_tiny_step0.onnx'), { label: 'label_B', cfg: null, tokens: null, logits: 'logits_BlV', kv: 4, kind: 'step' }],
    [fixture('var_tiny_step.onnx'), { label: 'label_B', cfg: null, tokens: 'x_BlCv', logits: 'logits_BlV', kv: 8, kind: 'step' }],
    [path.join(GELU_STEPS, 'var_step_s0.onnx'), { label: 'label_B', cfg: 'cfg', tokens: null, logits: 'logits_BlV', kv: 8, kind: 'step' }],
    [path.join(GELU_STEPS, 'var_step_s3.onnx'), { label: 'label_B', cfg: 'cfg', tokens: 'x_next_BlCv', logits: 'logits_BlV', kv: 16, kind: 'step' }],
  ];
  for (const [file, want] of cases) {
    const s = analyseVar(loadModel(file));
    const got = { label: names(s.label), cfg: names(s.cfg), tokens: names(s.tokenInput), logits: s.logits.name, kv: s.kv.inputs.length + s.kv.outputs.length, kind: s.kind };
    assert.deepEqual(got, want, file);
  }
  assert.deepEqual(['label_B', 'cfg', 'past_key_3', 'past_value_0', 'x_BlCv', 'x_next_BlCv', TEACHER_FORCING.tokens].map(inputRole), ['label', 'cfg', 'kv', 'kv', 'tokens', 'tokens', 'tokens']);
});

/** VAR's names as literals, and regular expressions matching them, outside src/analysis. */
function varNameCopies(): string[] {
  const SRC = path.join(repoRoot, 'src');
  const literal = new Set(['label_B', 'x_BLCv_wo_first_l', 'gt_idx_BL']);
  const out: string[] = [];
  for (const sf of srcProject(SRC).getSourceFiles()) {
    const rel = path.relative(SRC, sf.getFilePath()).split(path.sep).join('/');
    if (rel.startsWith('analysis/')) continue;
    for (const n of sf.getDescendants()) {
      if ((Node.isStringLiteral(n) || Node.isNoSubstitutionTemplateLiteral(n)) && literal.has(n.getLiteralValue())) out.push(`${rel}:${n.getStartLineNumber()} '${n.getLiteralValue()}'`);
      else if (Node.isRegularExpressionLiteral(n) && /label|cfg|logit|first_l/i.test(n.getLiteralText())) out.push(`${rel}:${n.getStartLineNumber()} ${n.getLiteralText()}`);
      else if (Node.isPropertyAccessExpression(n) && /^(label_B|gt_idx_BL|x_BLCv_wo_first_l)$/.test(n.getName())) out.push(`${rel}:${n.getStartLineNumber()} .${n.getName()}`);
    }
  }
  return out;
}

test("no module outside src/analysis matches VAR's input and output names itself", () => {
  assert.deepEqual(varNameCopies(), []);
});
