// The layering of src/ read from its import graph with ts-morph: no forbidden edge between layers, and the op
// contract defined once (src/op). The checker is first shown to fail on planted violations.
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { test } from 'node:test';
import { Project } from 'ts-morph';
import { contractCopies, forbiddenEdges, srcProject } from './helpers/layering';
import { repoRoot } from './helpers/fixtures';

function planted(files: Record<string, string>): Project {
  const p = new Project({ useInMemoryFileSystem: true, skipAddingFilesFromTsConfig: true });
  for (const [f, text] of Object.entries(files)) p.createSourceFile(`/src/${f}`, text);
  return p;
}

test('the layering check finds forbidden edges', () => {
  const p = planted({
    'ir/graph.ts': "import { analyseVar } from '../analysis/var-structure';\n",
    'onnx/io.ts': "import { Model } from '../ir/model';\nexport { x } from '../pipeline';\n",
    'analysis/var-structure.ts': "import { insert } from '../passes/insert';\n",
    'passes/insert.ts': "import { createSession } from '../runtime';\n",
    'eval/sweep.ts': "import { table } from '../cli/format';\n",
    'runtime/index.ts': "const k = require('../calib/kmeans');\n",
    'stages/capture.ts': "import { MoefyError } from '../errors';\n",
  });
  const v = forbiddenEdges(p, '/src').map((x) => `${x.file}: ${x.what}`);
  assert.deepEqual(v.sort(), [
    "analysis/var-structure.ts: analysis imports passes ('../passes/insert')",
    "eval/sweep.ts: eval imports cli ('../cli/format')",
    "ir/graph.ts: ir imports analysis ('../analysis/var-structure')",
    "onnx/io.ts: onnx imports pipeline ('../pipeline')",
    "passes/insert.ts: passes imports runtime ('../runtime')",
    "runtime/index.ts: runtime imports calib ('../calib/kmeans')",
  ]);
});

test('the layering check finds second definitions of the op contract outside src/op', () => {
  const p = planted({
    'op/contract.ts': "export const MOE_DOMAIN = 'ai.moefy';\nexport const THRESHOLD_INPUT = 'moe_threshold';\nexport function scaleOfPositions() {}\n",
    'analysis/a.ts': "const D = 'ai.moefy';\nconst ok = `block ${1} holds a DynamicMoE node`;\n",
    'eval/b.ts': "f.moe_threshold = t;\nconst re = /^past_/;\n",
    'runtime/c.ts': "export function scaleOfPosition(pos: number) { return pos; }\nconst n = 'DynamicMoE';\nconst scaleOf = scaleOfPositions(4, [1]);\n",
    'passes/d.ts': "const name = `moe_threshold`;\n",
    'calib/e.ts': "const cut = Math.fround(Math.fround(t) * m);\nif (p >= cut) on++;\nif (q >= Math.fround(g[j] * m)) lo = j;\nconst sq = Math.fround(a * a);\nconst lim = Math.fround((t) * mx);\nif (v < lim) off++;\n",
  });
  const v = contractCopies(p, '/src').map((x) => `${x.file}: ${x.what}`);
  assert.deepEqual(v.sort(), [
    "analysis/a.ts:1: the op contract's 'ai.moefy' as a literal",
    "calib/e.ts:2: a routing rule 'p >= cut' outside src/op (call src/op/routing.ts)",
    "calib/e.ts:3: a routing rule 'q >= Math.fround(g[j] * m)' outside src/op (call src/op/routing.ts)",
    "calib/e.ts:6: a routing rule 'v < lim' outside src/op (call src/op/routing.ts)",
    "eval/b.ts:1: the threshold input name 'moe_threshold' as an identifier",
    'eval/b.ts:2: the KV-cache names /^past_/ outside src/analysis',
    "passes/d.ts:1: the op contract's 'moe_threshold' as a literal",
    "runtime/c.ts:1: a scale-of-position rule 'scaleOfPosition' outside src/op",
    "runtime/c.ts:2: the op contract's 'DynamicMoE' as a literal",
  ]);
});

const SRC = path.join(repoRoot, 'src');
const project = srcProject(SRC);

test('src/ has no forbidden import edge between layers', () => {
  assert.ok(project.getSourceFiles().length > 40, 'the src/ files were read');
  assert.deepEqual(forbiddenEdges(project, SRC), []);
});

test('src/ defines the op contract only in src/op', () => {
  assert.deepEqual(contractCopies(project, SRC), []);
});
