// `moefy bench dense moe`: both models timed in one run through moefy's runtime.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { convert } from '../src/pipeline';
import { repoRoot, rmDir, runCli, tmpDir } from './helpers/fixtures';
import { FAST } from './helpers/fast';

test('moefy bench times the dense and the converted model and prints their ratio', async () => {
  const dir = tmpDir('bench');
  try {
    const dense = path.join(repoRoot, 'fixtures', 'small-var.onnx');
    const moe = path.join(dir, 'small.moe.onnx');
    await convert(dense, { ...FAST, experts: 4, fromScale: 8, thresholds: [0.3], output: moe });
    const r = runCli(['bench', dense, moe, '--reps', '1', '--inputs', path.join(repoRoot, 'fixtures', 'small-var-calib')]);
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout.split('\n').filter((l) => l.startsWith(dense) || l.startsWith(moe));
    assert.equal(rows.length, 2, r.stdout);
    const ratio = Number(rows[1].trim().split(/\s+/).pop());
    assert.ok(ratio > 0 && Number.isFinite(ratio), r.stdout);
    // A dense model in the MoE slot is refused with one line.
    const bad = runCli(['bench', dense, dense]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr.trim(), /^moefy: .*holds no DynamicMoE node: give the dense model first, then its conversion$/);
  } finally {
    rmDir(dir);
  }
});
