// `moefy run` and `moefy lib-path` end to end.
import { test } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Tensor } from 'onnxruntime-common';
import { readTensorSet, writeTensorSet } from '../src/io';
import { libPath } from '../src/runtime';
import { onnx } from 'onnx-proto';
import { buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';

const BIN = path.resolve(__dirname, '..', '..', 'bin', 'moefy.js');

function moefy(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
}

test('cli: lib-path prints the library path', () => {
  const r = moefy(['lib-path']);
  assert.strictEqual(r.status, 0, r.stderr);
  assert.strictEqual(r.stdout.trim(), libPath());
});

test('cli: run writes outputs and summarises experts per scale', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-run-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = rng(3);
  const D = 8, E = 4, S = 4, B = 2, L = 5;
  const model = path.join(dir, 'moe.onnx');
  fs.writeFileSync(
    model,
    buildDynamicMoeModel({
      D, E, S, patchNums: [1, 2], threshold: [0, 2], withActive: true,
      weights: { W1: randomArray(r, D * E * S), B1: randomArray(r, E * S), W2: randomArray(r, E * S * D), B2: randomArray(r, D) },
    }),
  );
  const inputs = path.join(dir, 'in.npz');
  await writeTensorSet(inputs, {
    X: new Tensor('float32', randomArray(r, B * L * D), [B, L, D]),
    norms: new Tensor('float32', Float32Array.from(randomArray(r, B * L * E), Math.abs), [B, L, E]),
  });
  const out = path.join(dir, 'out');
  const res = moefy(['run', model, '--inputs', inputs, '--output', out, '--patch-nums', '1,2', '--experts', '4', '--threads', '1']);
  assert.strictEqual(res.status, 0, res.stderr);
  assert.match(res.stdout, /Y float32 \[2, 5, 8\]/);
  assert.match(res.stdout, /scale 1 \(1x1\): 4\.00 experts\/token \(100\.0%\)/);
  assert.match(res.stdout, /scale 2 \(2x2\): 1\.00 experts\/token \(25\.0%\)/);
  const back = await readTensorSet(out);
  assert.deepStrictEqual([...back.Y.dims], [2, 5, 8]);
  const bad = moefy(['run', model, '--inputs', path.join(dir, 'missing.npz')]);
  assert.strictEqual(bad.status, 1);
  assert.match(bad.stderr, /^moefy: --inputs .*missing\.npz: no such file or folder\n$/);
});

test('cli: run reports experts per scale when active is not a graph output', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-run-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = rng(4);
  const D = 8, E = 4, S = 4, B = 1, L = 5;
  const proto = onnx.ModelProto.decode(
    buildDynamicMoeModel({
      D, E, S, patchNums: [1, 2], threshold: [0, 2], withActive: true,
      weights: { W1: randomArray(r, D * E * S), B1: randomArray(r, E * S), W2: randomArray(r, E * S * D), B2: randomArray(r, D) },
    }),
  );
  proto.graph!.output = proto.graph!.output!.filter((o) => o.name !== 'active');
  const model = path.join(dir, 'moe.onnx');
  fs.writeFileSync(model, onnx.ModelProto.encode(proto).finish());
  const inputs = path.join(dir, 'in');
  await writeTensorSet(inputs, {
    X: new Tensor('float32', randomArray(r, B * L * D), [B, L, D]),
    norms: new Tensor('float32', Float32Array.from(randomArray(r, B * L * E), Math.abs), [B, L, E]),
  });
  const out = path.join(dir, 'out.npz');
  const res = moefy(['run', model, '--inputs', inputs, '--output', out]);
  assert.strictEqual(res.status, 0, res.stderr);
  assert.match(res.stdout, /scale 2 \(2x2\): 1\.00 experts\/token \(25\.0%\)/);
  assert.deepStrictEqual(Object.keys(await readTensorSet(out)), ['Y']);
  const plain = moefy(['run', model, '--inputs', inputs, '--no-summary']);
  assert.strictEqual(plain.status, 0, plain.stderr);
  assert.doesNotMatch(plain.stdout, /experts\/token/);
});
