// Issue 2, item 2: real exports survive load/save. Unchanged → byte-identical; external data → the same model, which
// ONNX Runtime runs to PyTorch's logits; IR 10 fields are kept (checked with an independent wire-format reader).
import { test } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { loadModel, saveModel, encodeModel, decodeModel } from '../src/onnx/io';
import { Tensor } from '../src/onnx/tensor';
import { AttributeType, DataType, FunctionProto } from '../src/onnx/schema';
import { allOnnxFiles, fixture, IoTensor, readIo, rmDir, tmpDir, varFixtures } from './helpers/fixtures';
import { fieldsOf, stringEntry, utf8, wireFields } from './helpers/protowire';

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.byteLength === b.byteLength && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

test('round trip: every fixture loaded and saved unchanged is byte-identical', () => {
  const d = tmpDir('rt');
  try {
    const files = allOnnxFiles();
    assert.ok(files.length >= 29, `found ${files.length} fixtures`);
    for (const f of files) {
      const orig = fs.readFileSync(f);
      const out = path.join(d, path.basename(f));
      const r = saveModel(loadModel(f), out, { externalData: false });
      assert.strictEqual(r.externalData, null);
      assert.ok(sameBytes(fs.readFileSync(out), orig), `${f}: saved copy differs from the original`);
      assert.ok(sameBytes(encodeModel(decodeModel(orig)), orig), `${f}: encodeModel(decodeModel) differs`);
      fs.rmSync(out);
    }
  } finally {
    rmDir(d);
  }
});

test('round trip: external data decodes to the same model (re-saved inline it is byte-identical)', () => {
  const d = tmpDir('ext');
  try {
    for (const e of varFixtures()) {
      const orig = fs.readFileSync(e.file);
      const base = path.basename(e.file);
      const ext = path.join(d, base);
      const r = saveModel(loadModel(e.file), ext, { externalData: true });
      assert.strictEqual(r.externalData, path.join(d, `${base}.data`));
      const dataSize = fs.statSync(r.externalData!).size;
      assert.ok(dataSize > 0.9 * orig.byteLength, `${base}: external data file holds the weights (${dataSize} B)`);
      assert.ok(fs.statSync(ext).size < 0.1 * orig.byteLength, `${base}: model file without the weights`);
      // Every initializer of 1 KiB or more is external, with location/offset/length (read from the wire format).
      const graph = fieldsOf(fs.readFileSync(ext), 7)[0].bytes!;
      let externals = 0;
      for (const init of fieldsOf(graph, 5)) {
        const loc = fieldsOf(init.bytes!, 14)[0]?.varint;
        if (loc === 1n) {
          externals++;
          const kv = Object.fromEntries(fieldsOf(init.bytes!, 13).map((x) => { const s = stringEntry(x.bytes!); return [s.key, s.value]; }));
          assert.strictEqual(kv.location, `${base}.data`);
          assert.ok(Number(kv.offset) + Number(kv.length) <= dataSize);
          assert.strictEqual(fieldsOf(init.bytes!, 9).length, 0, 'no raw_data beside external data');
        }
      }
      assert.ok(externals > 10, `${base}: ${externals} external initializers`);
      const again = loadModel(ext);
      const inline = path.join(d, `inline_${base}`);
      saveModel(again, inline, { externalData: false });
      assert.ok(sameBytes(fs.readFileSync(inline), orig), `${base}: external → inline is not the original`);
      fs.rmSync(inline);
    }
  } finally {
    rmDir(d);
  }
});

/** A decoded protobuf message as plain JSON data (drops protobufjs' message classes). */
const plain = (x: unknown) => JSON.parse(JSON.stringify(x ?? null));

function toOrt(t: IoTensor): ort.Tensor {
  return new ort.Tensor(t.dtype, t.data, t.shape);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.strictEqual(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

test('ONNX Runtime runs the external-data copies and reproduces the fixtures\' outputs within 1e-4', async () => {
  const d = tmpDir('ort');
  try {
    for (const e of varFixtures().filter((x) => x.io)) {
      const base = path.basename(e.file);
      const ext = path.join(d, base);
      saveModel(loadModel(e.file), ext, { externalData: true });
      const io = readIo(e.io!);
      const sess = await ort.InferenceSession.create(ext, { intraOpNumThreads: 2, graphOptimizationLevel: 'basic' });
      const feeds: Record<string, ort.Tensor> = {};
      for (const n of sess.inputNames) {
        assert.ok(io[n], `${base}: the io folder has input ${n}`);
        feeds[n] = toOrt(io[n]);
      }
      const outs = await sess.run(feeds);
      let compared = 0;
      for (const n of sess.outputNames) {
        if (!io[n]) continue;
        const got = outs[n];
        assert.deepStrictEqual([...got.dims], io[n].shape, `${base}: ${n} shape`);
        const diff = maxAbsDiff(got.data as Float32Array, io[n].data as Float32Array);
        assert.ok(diff <= 1e-4, `${base}: ${n} differs from the reference by ${diff}`);
        compared++;
      }
      assert.ok(sess.outputNames.some((n) => /logits/.test(n) && io[n]), `${base}: logits were compared`);
      assert.ok(compared >= 1);
      await sess.release();
    }
  } finally {
    rmDir(d);
  }
});

test('IR 10 fields survive save and load (node/graph/value_info metadata, FLOAT8 and INT4 initializers, function attributes)', () => {
  const d = tmpDir('ir10');
  try {
    const m = loadModel(fixture('var_tiny_step0.onnx'));
    m.proto.ir_version = 10;
    const g = m.graph;
    const node = g.nodes.find((n) => n.opType === 'Tanh')!;
    node.proto.metadata_props = [{ key: 'moefy.test', value: 'node-meta' }, { key: 'k2', value: 'v2' }];
    (g as unknown as { proto: { metadata_props?: unknown } }).proto.metadata_props = [{ key: 'graph.key', value: 'graph-meta' }];
    // A value_info entry with metadata on an intermediate value.
    const inter = node.output(0);
    inter.info = { name: inter.name, type: { tensor_type: { elem_type: DataType.FLOAT } }, metadata_props: [{ key: 'vi.key', value: 'vi-meta' }] };
    if (!g.valueInfo.includes(inter)) g.valueInfo.push(inter);
    const f8 = Uint8Array.from([0x00, 0x38, 0x40, 0xb8, 0x7e]); // 0, 1, 2, -1, 448 in E4M3FN
    const i4 = Uint8Array.from([0x21, 0x43, 0x0f]); // 1, 2, 3, 4, -1 (low nibble first), 5 elements
    g.addInitializer('test_f8', new Tensor(DataType.FLOAT8E4M3FN, [5], { kind: 'bytes', bytes: f8 }));
    g.addInitializer('test_i4', new Tensor(DataType.INT4, [5], { kind: 'bytes', bytes: i4 }));
    const fn: FunctionProto = {
      name: 'ScaledIdentity', domain: 'test.moefy', input: ['x'], output: ['y'],
      attribute_proto: [{ name: 'alpha', type: AttributeType.FLOAT, f: 0.25 }, { name: 'mode', type: AttributeType.STRING, s: Buffer.from('fast') }],
      node: [{ op_type: 'Identity', input: ['x'], output: ['y'], metadata_props: [{ key: 'fn.node', value: 'inner' }] }],
      opset_import: [{ domain: '', version: 17 }],
      metadata_props: [{ key: 'fn.key', value: 'fn-meta' }],
    };
    m.addFunction(fn);
    const file = path.join(d, 'ir10.onnx');
    saveModel(m, file, { externalData: false });
    const bytes = fs.readFileSync(file);

    // 1. Independent check on the wire: ModelProto.ir_version = 1, graph = 7, functions = 25.
    assert.strictEqual(fieldsOf(bytes, 1)[0].varint, 10n);
    const gb = fieldsOf(bytes, 7)[0].bytes!;
    assert.deepStrictEqual(fieldsOf(gb, 16).map((x) => stringEntry(x.bytes!)), [{ key: 'graph.key', value: 'graph-meta' }]);
    const tanh = fieldsOf(gb, 1).map((x) => x.bytes!).find((b) => utf8(fieldsOf(b, 4)[0]?.bytes) === 'Tanh')!;
    assert.deepStrictEqual(fieldsOf(tanh, 9).map((x) => stringEntry(x.bytes!)), [{ key: 'moefy.test', value: 'node-meta' }, { key: 'k2', value: 'v2' }]);
    const vi = fieldsOf(gb, 13).map((x) => x.bytes!).find((b) => utf8(fieldsOf(b, 1)[0].bytes) === inter.name)!;
    assert.deepStrictEqual(fieldsOf(vi, 4).map((x) => stringEntry(x.bytes!)), [{ key: 'vi.key', value: 'vi-meta' }]);
    const inits = new Map(fieldsOf(gb, 5).map((x) => [utf8(fieldsOf(x.bytes!, 8)[0].bytes), x.bytes!]));
    for (const [name, type, data] of [['test_f8', 17n, f8], ['test_i4', 22n, i4]] as const) {
      const t = inits.get(name)!;
      assert.ok(t, name);
      assert.strictEqual(fieldsOf(t, 2)[0].varint, type, `${name} data_type`);
      assert.deepStrictEqual(fieldsOf(t, 1).map((x) => x.varint), [5n], `${name} dims`);
      assert.ok(sameBytes(fieldsOf(t, 9)[0].bytes!, data), `${name} raw_data`);
    }
    const fb = fieldsOf(bytes, 25);
    assert.strictEqual(fb.length, 1);
    const fw = wireFields(fb[0].bytes!);
    assert.strictEqual(utf8(fw.find((x) => x.field === 1)!.bytes), 'ScaledIdentity');
    const aps = fw.filter((x) => x.field === 11).map((x) => x.bytes!);
    assert.strictEqual(aps.length, 2);
    assert.strictEqual(utf8(fieldsOf(aps[0], 1)[0].bytes), 'alpha');
    assert.strictEqual(wireFields(aps[0]).find((x) => x.field === 2)?.wire, 5); // f: fixed32
    assert.strictEqual(Buffer.from(fieldsOf(aps[0], 2)[0].bytes!).readFloatLE(0), 0.25);
    assert.strictEqual(utf8(fieldsOf(aps[1], 4)[0].bytes), 'fast');
    assert.deepStrictEqual(fw.filter((x) => x.field === 14).map((x) => stringEntry(x.bytes!)), [{ key: 'fn.key', value: 'fn-meta' }]);

    // 2. Through moefy's loader: the same values.
    const back = loadModel(file);
    assert.strictEqual(back.irVersion, 10);
    const bn = back.graph.nodes.find((n) => n.name === node.name)!;
    assert.deepStrictEqual(plain(bn.proto.metadata_props), plain(node.proto.metadata_props));
    assert.deepStrictEqual(plain((back.graph as unknown as { proto: { metadata_props: unknown } }).proto.metadata_props), [{ key: 'graph.key', value: 'graph-meta' }]);
    assert.deepStrictEqual(plain(back.graph.value(inter.name).info?.metadata_props), [{ key: 'vi.key', value: 'vi-meta' }]);
    const bf8 = back.graph.value('test_f8').tensor!;
    assert.strictEqual(bf8.dataType, DataType.FLOAT8E4M3FN);
    assert.deepStrictEqual(bf8.dims, [5]);
    assert.ok(sameBytes(bf8.bytes(), f8));
    const bi4 = back.graph.value('test_i4').tensor!;
    assert.strictEqual(bi4.dataType, DataType.INT4);
    assert.strictEqual(bi4.byteLength, 3);
    assert.ok(sameBytes(bi4.bytes(), i4));
    assert.strictEqual(back.functions.length, 1);
    const bfn = back.functions[0];
    assert.strictEqual(bfn.name, 'ScaledIdentity');
    assert.strictEqual(bfn.domain, 'test.moefy');
    assert.strictEqual(bfn.attribute_proto?.length, 2);
    assert.strictEqual(bfn.attribute_proto![0].name, 'alpha');
    assert.strictEqual(bfn.attribute_proto![0].f, 0.25);
    assert.strictEqual(Buffer.from(bfn.attribute_proto![1].s!).toString(), 'fast');
    assert.deepStrictEqual(plain(bfn.metadata_props), [{ key: 'fn.key', value: 'fn-meta' }]);
    assert.deepStrictEqual(plain(bfn.node?.[0].metadata_props), [{ key: 'fn.node', value: 'inner' }]);

    // 3. A second save is byte-identical; and via external data and back inline, too.
    const file2 = path.join(d, 'ir10_again.onnx');
    saveModel(back, file2, { externalData: false });
    assert.ok(sameBytes(fs.readFileSync(file2), bytes), 'second save differs');
    const ext = path.join(d, 'ir10_ext.onnx');
    saveModel(back, ext, { externalData: true, sizeThreshold: 1 });
    const file3 = path.join(d, 'ir10_inline.onnx');
    saveModel(loadModel(ext), file3, { externalData: false });
    assert.ok(sameBytes(fs.readFileSync(file3), bytes), 'external → inline differs');
  } finally {
    rmDir(d);
  }
});
