// libmoefy_ops.so in other ONNX Runtime versions (issue 10): the floor (1.17), Debian trixie's 1.21 and
// onnxruntime-node's 1.30 load the library and run converted models (an empty optional input before the threshold
// input, as every converted model) like the op's function body, with and without moe_threshold fed, and the
// float16 kernel (a second op of the same name) like the reference, and every routing rule with skip_bias (contract
// version 2) in the kernel and the function body like the reference, a wrong skip_bias an error status.
// `node dist/test/helpers/ort-compat.js --minors 1.17` covers every minor version (README table).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { checkVersion, contractV2Ok, convertCompatModels, ortLibrary, registerHost } from './helpers/ort-compat';
import { repoRoot, rmDir, tmpDir } from './helpers/fixtures';
import { libPath } from '../src/runtime';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { findOrtHeaders } = require(path.join(repoRoot, 'scripts', 'build-native.js')) as { findOrtHeaders(): string };

test('ONNX Runtime 1.17 (the floor), 1.21 and 1.30 run converted models with the kernel like the function body', { timeout: 900_000 }, async () => {
  const dir = tmpDir('ort-compat');
  try {
    const models = await convertCompatModels(dir);
    for (const v of ['1.17.3', '1.21.1', '1.30.0']) {
      const r = checkVersion(v, models);
      assert.equal(r.error, undefined, `${v}: ${r.error}`);
      assert.ok(r.kernelRan, `${v}: moefy's kernel was not created`);
      assert.equal(r.models.length, 2, `${v}: models run`);
      assert.ok(r.f16Err !== undefined && r.f16Err < 1e-3, `${v}: float16 kernel vs reference ${r.f16Err}`);
      assert.ok(r.v2 && contractV2Ok(r.v2), `${v}: routing rules and skip_bias ${JSON.stringify(r.v2)}`);
      for (const m of r.models) {
        assert.ok(m.errDefault < 1e-4, `${v} ${m.name}: kernel vs function body ${m.errDefault}`);
        assert.ok(m.errFed < 1e-4, `${v} ${m.name}: with moe_threshold fed, kernel vs function body ${m.errFed}`);
        assert.ok(m.feedChanged, `${v} ${m.name}: the moe_threshold feed changed nothing`);
      }
    }
  } finally {
    rmDir(dir);
  }
});

test('ONNX Runtime older than the floor (1.16) gets an error status from RegisterCustomOps, no crash', { timeout: 300_000 }, () => {
  const dir = tmpDir('ort-host');
  try {
    const register = registerHost(dir);
    assert.match(register('1.16.3'), /^error: moefy_ops: ONNX Runtime 1\.16\.3 is too old: the library needs 1\.17 or newer/);
    assert.equal(register('1.17.3'), 'registered');
  } finally {
    rmDir(dir);
  }
});

test('the README C++ example (kernels/examples/run_moe.cc) builds and runs a converted model like the function body', { timeout: 600_000 }, async () => {
  const dir = tmpDir('ort-cxx');
  try {
    const [full] = await convertCompatModels(dir);
    const lib = ortLibrary('1.30.0');
    const exe = path.join(dir, 'run_moe');
    const b = spawnSync('g++', ['-std=c++17', '-O1', path.join(repoRoot, 'kernels', 'examples', 'run_moe.cc'), `-I${findOrtHeaders()}`,
      `-L${path.dirname(lib)}`, '-lonnxruntime', `-Wl,-rpath,${path.dirname(lib)}`, '-o', exe], { encoding: 'utf8' });
    assert.equal(b.status, 0, `g++ failed: ${b.stderr}`);
    const sum = (ops: string, t: string) => {
      const r = spawnSync(exe, [full.file, ops, t], { encoding: 'utf8' });
      assert.equal(r.status, 0, `run_moe ${ops || '(no library)'} ${t}: exit ${r.status} ${r.signal ?? ''} ${r.stderr}`);
      const m = / sum (\S+)/.exec(r.stdout);
      assert.ok(m, r.stdout);
      return Number(m[1]);
    };
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-9);
    const k3 = sum(libPath(), '0.3'), k6 = sum(libPath(), '0.6');
    assert.ok(rel(k3, sum('', '0.3')) < 1e-5 && rel(k6, sum('', '0.6')) < 1e-5, 'kernel vs function body');
    assert.ok(rel(k3, k6) > 1e-6, 'the moe_threshold feed changed nothing');
  } finally {
    rmDir(dir);
  }
});
