// ONNX Runtime 1.30 writes telemetry files (.ses, mat-debug-<pid>.log) into the temp dir of every process that opens a
// session unless ORT_DISABLE_TELEMETRY is set: a process that imports moefy (library, not the CLI) must leave none.
import { test } from 'node:test';
import assert from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rmDir, tmpDir } from './helpers/fixtures';

const dist = path.resolve(__dirname, '..');
const sessions = `
  const ort = require('onnxruntime-node');
  const { buildDenseFfnModel, randomArray, rng } = require(${JSON.stringify(path.join(dist, 'test', 'helpers', 'test-models.js'))});
  (async () => {
    const r = rng(1);
    const model = buildDenseFfnModel(8, 4, { W1: randomArray(r, 32), B1: randomArray(r, 4), W2: randomArray(r, 32), B2: randomArray(r, 8) });
    const s = await ort.InferenceSession.create(model);
    await s.release();
    if (typeof moefy !== 'undefined') (await moefy.createSession(model)).release();
  })();`;

function leftIn(script: string): string[] {
  const tmp = tmpDir('telemetry');
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp };
    delete env.ORT_DISABLE_TELEMETRY;
    // A user's shell, not a CI job: ONNX Runtime also skips its telemetry where CI is set (measured), as on our CI.
    for (const k of ['CI', 'CONTINUOUS_INTEGRATION', 'GITHUB_ACTIONS', 'TF_BUILD', 'BUILD_NUMBER', 'RUN_ID']) delete env[k];
    const r = spawnSync(process.execPath, ['-e', script], { env, encoding: 'utf8' });
    assert.strictEqual(r.status, 0, r.stderr);
    return fs.readdirSync(tmp);
  } finally {
    rmDir(tmp);
  }
}

test('importing moefy turns ONNX Runtime telemetry off: no .ses / mat-debug file in the temp dir', () => {
  // Without moefy, onnxruntime-node leaves its files (what the setting is for).
  assert.ok(leftIn(sessions).some((f) => /^mat-debug-\d+\.log$|^\.ses$/.test(f)), 'onnxruntime-node alone wrote no telemetry file');
  const withMoefy = `const moefy = require(${JSON.stringify(path.join(dist, 'src', 'index.js'))});` + sessions;
  assert.deepStrictEqual(leftIn(withMoefy), []);
});
