// libmoefy_ops.so hygiene: hidden visibility, only RegisterCustomOps exported, no dependency on build caches.
import { test } from 'node:test';
import assert from 'node:assert';
import { spawnSync } from 'node:child_process';
import { libPath } from '../src/runtime';

const hasNm = spawnSync('nm', ['--version']).status === 0;

test('kernel library exports only RegisterCustomOps', { skip: !hasNm && 'nm not installed' }, () => {
  const r = spawnSync('nm', ['-D', '--defined-only', libPath()], { encoding: 'utf8' });
  assert.strictEqual(r.status, 0, r.stderr);
  const syms = r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((p) => p.length >= 3 && /[TDBVW]/.test(p[1]))
    .map((p) => p[2]);
  assert.deepStrictEqual(syms, ['RegisterCustomOps']);
});

test('kernel library needs only system libraries', { skip: spawnSync('ldd', ['--version']).status !== 0 && 'ldd missing' }, () => {
  const r = spawnSync('ldd', [libPath()], { encoding: 'utf8' });
  assert.strictEqual(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /not found/);
  assert.doesNotMatch(r.stdout, /\.cache/);
});
