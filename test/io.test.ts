import { after, test } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { readTensorSet, writeTensorSet, encodeNpy, decodeNpy, TensorSetWriter } from '../src/io';
import { liveTemps } from '../src/files/temp';
import { MoefyError } from '../src/errors';
import { FIXTURES } from './helpers/fixtures';

const FIXTURE = path.join(FIXTURES, 'var_tiny_full_io');

const made: string[] = [];
function tmpdir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-io-'));
  made.push(d);
  return d;
}
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

function sample(): Record<string, Tensor> {
  return {
    f32: new Tensor('float32', Float32Array.from([1.5, -2, 3.25, 0, 7, 8]), [2, 3]),
    i64: new Tensor('int64', BigInt64Array.from([1n, -5n, 1n << 40n]), [3]),
    i32: new Tensor('int32', Int32Array.from([7, -9]), [2, 1]),
    b: new Tensor('bool', Uint8Array.from([1, 0, 1]), [3]),
    f16: new Tensor('float16', Uint16Array.from([0x3c00, 0xc000]), [2]),
    scalar: new Tensor('float32', Float32Array.from([42]), []),
    'onnx::weird/name': new Tensor('uint8', Uint8Array.from([1, 2, 3, 4]), [2, 2]),
  };
}

function assertSame(a: Record<string, Tensor>, b: Record<string, Tensor>) {
  assert.deepStrictEqual(Object.keys(b).sort(), Object.keys(a).sort());
  for (const k of Object.keys(a)) {
    assert.strictEqual(b[k].type, a[k].type, k);
    assert.deepStrictEqual([...b[k].dims], [...a[k].dims], k);
    assert.deepStrictEqual(Array.from(b[k].data as ArrayLike<unknown>), Array.from(a[k].data as ArrayLike<unknown>), k);
  }
}

test('io: folder round trip', async () => {
  const d = tmpdir();
  const p = path.join(d, 'set');
  await writeTensorSet(p, sample());
  assertSame(sample(), await readTensorSet(p));
  // overwrite an existing folder
  await writeTensorSet(p, { only: new Tensor('float32', Float32Array.from([1]), [1]) });
  const back = await readTensorSet(p);
  assert.deepStrictEqual(Object.keys(back), ['only']);
  assert.deepStrictEqual(fs.readdirSync(d), ['set']);
});

test('io: npz round trip', async () => {
  const d = tmpdir();
  const p = path.join(d, 'set.npz');
  await writeTensorSet(p, sample());
  assertSame(sample(), await readTensorSet(p));
  assert.deepStrictEqual(fs.readdirSync(d), ['set.npz']);
});

test('io: npy header is 64-byte aligned and parses', () => {
  const t = new Tensor('float32', Float32Array.from([1, 2, 3]), [3]);
  const b = encodeNpy(t, 'x');
  const hl = b[8] | (b[9] << 8);
  assert.strictEqual((10 + hl) % 64, 0);
  assert.match(Buffer.from(b.subarray(10, 10 + hl)).toString('latin1'), /'shape': \(3,\)/);
  assert.deepStrictEqual(Array.from(decodeNpy(b, 'x').data as Float32Array), [1, 2, 3]);
});

test('io: big-endian npy is byte-swapped', () => {
  const header = "{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }";
  const pad = 64 - ((10 + header.length + 1) % 64);
  const h = header + ' '.repeat(pad % 64) + '\n';
  const buf = new Uint8Array(10 + h.length + 8);
  buf.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, h.length & 255, h.length >> 8]);
  for (let i = 0; i < h.length; i++) buf[10 + i] = h.charCodeAt(i);
  buf.set([0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe], 10 + h.length);
  assert.deepStrictEqual(Array.from(decodeNpy(buf, 'x').data as Int32Array), [1, -2]);
});

test('io: reads the shared fixture folder', { skip: !fs.existsSync(FIXTURE) }, async () => {
  const s = await readTensorSet(FIXTURE);
  assert.strictEqual(s.label_B.type, 'int64');
  assert.deepStrictEqual([...s.x_BLCv_wo_first_l.dims], [2, 679, 32]);
  assert.strictEqual((s.logits_BLV.data as Float32Array).length, 2 * 680 * 4096);
});

test('io: never replaces a folder that is not a tensor set', async () => {
  const d = tmpdir();
  fs.writeFileSync(path.join(d, 'precious.txt'), 'keep me');
  await assert.rejects(writeTensorSet(d, sample()), (e: Error) => e instanceof MoefyError && /refusing/.test(e.message));
  assert.strictEqual(fs.readFileSync(path.join(d, 'precious.txt'), 'utf8'), 'keep me');
  const set = path.join(d, 'set');
  await writeTensorSet(set, sample());
  fs.writeFileSync(path.join(set, 'extra.txt'), 'x');
  await assert.rejects(writeTensorSet(set, sample()), /refusing/);
  fs.rmSync(path.join(set, 'extra.txt'));
  await writeTensorSet(set, sample());
  const empty = path.join(d, 'empty');
  fs.mkdirSync(empty);
  await writeTensorSet(empty, sample());
  assertSame(sample(), await readTensorSet(empty));
});

test('io: errors are MoefyError', async () => {
  const d = tmpdir();
  await assert.rejects(readTensorSet(path.join(d, 'missing')), MoefyError);
  fs.mkdirSync(path.join(d, 'bad'));
  fs.writeFileSync(path.join(d, 'bad', 'manifest.json'), JSON.stringify({ a: { file: 'a.bin', dtype: 'float32', shape: [4] } }));
  fs.writeFileSync(path.join(d, 'bad', 'a.bin'), Buffer.alloc(12));
  await assert.rejects(readTensorSet(path.join(d, 'bad')), (e: Error) => e instanceof MoefyError && /needs 16/.test(e.message));
  fs.writeFileSync(path.join(d, 'junk.npz'), 'PK garbage');
  await assert.rejects(readTensorSet(path.join(d, 'junk.npz')), MoefyError);
});

test('TensorSetWriter: pieces appended by rows (in blocks for a CFG-doubled cache) read back as the joined set', async () => {
  const dir = tmpdir();
  const target = path.join(dir, 'set');
  const w = new TensorSetWriter(target);
  // Two pieces of 2 and 1 samples; the cache has 2 rows per sample: conditional rows first, then unconditional.
  w.append('x', new Tensor('float32', Float32Array.from([1, 2, 3, 4]), [2, 2]));
  w.append('kv', new Tensor('float32', Float32Array.from([10, 11, 20, 21]), [4, 1]), 2);
  w.append('cfg', new Tensor('float32', Float32Array.of(2), []));
  w.append('x', new Tensor('float32', Float32Array.from([5, 6]), [1, 2]));
  w.append('kv', new Tensor('float32', Float32Array.from([12, 22]), [2, 1]), 2);
  w.append('cfg', new Tensor('float32', Float32Array.of(2), []));
  assert.ok(!fs.existsSync(target), 'nothing at the target before commit');
  await w.commit();
  const r = await readTensorSet(target);
  assert.deepStrictEqual([...r.x.dims], [3, 2]);
  assert.deepStrictEqual(Array.from(r.x.data as Float32Array), [1, 2, 3, 4, 5, 6]);
  assert.deepStrictEqual([...r.kv.dims], [6, 1]);
  assert.deepStrictEqual(Array.from(r.kv.data as Float32Array), [10, 11, 12, 20, 21, 22]);
  assert.deepStrictEqual([...r.cfg.dims], []);
  assert.deepStrictEqual(fs.readdirSync(target).sort(), ['cfg.bin', 'kv.bin', 'manifest.json', 'x.bin']);
  assert.ok(!liveTemps().some((p) => p.startsWith(dir)), `temporaries left: ${liveTemps().join(', ')}`);
  // A discarded writer leaves nothing; a shape change between pieces is one clear error.
  const w2 = new TensorSetWriter(path.join(dir, 'other'));
  w2.append('x', new Tensor('float32', Float32Array.from([1, 2]), [1, 2]));
  assert.throws(() => w2.append('x', new Tensor('float32', Float32Array.from([1, 2, 3]), [1, 3])), (e: Error) => e instanceof MoefyError && /changed type or shape/.test(e.message));
  w2.discard();
  assert.deepStrictEqual(fs.readdirSync(dir), ['set']);
});
