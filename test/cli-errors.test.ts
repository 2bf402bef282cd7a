// Issue 2, item 5: bad input to `moefy inspect` (run as a child process) exits non-zero with exactly one line on
// stderr naming the problem and no stack trace; with --verbose the stack trace appears.
import { test, before, after } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel, saveModel } from '../src/onnx/io';
import { fixture, GELU_STEPS, rmDir, runCli, tmpDir } from './helpers/fixtures';

let dir = '';
const cases: { what: string; file: () => string; expect: RegExp }[] = [];

before(() => {
  dir = tmpDir('cli-err');
  const empty = path.join(dir, 'empty.onnx');
  fs.writeFileSync(empty, '');
  const whole = fs.readFileSync(fixture('var_tiny_full.onnx'));
  const truncated = path.join(dir, 'truncated.onnx');
  fs.writeFileSync(truncated, whole.subarray(0, Math.floor(whole.length / 2)));
  // A JPEG renamed .onnx: SOI + APP0/JFIF header, then junk.
  const jpeg = path.join(dir, 'photo.onnx');
  fs.writeFileSync(jpeg, Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]), Buffer.from('JFIF\0'), Buffer.alloc(500, 0x5a)]));
  // External data saved, then the .data file deleted.
  const ext = path.join(dir, 'ext', 'model.onnx');
  fs.mkdirSync(path.dirname(ext));
  const r = saveModel(loadModel(fixture('var_tiny_step0.onnx')), ext, { externalData: true });
  fs.rmSync(r.externalData!);
  cases.push(
    { what: 'an empty file', file: () => empty, expect: /empty\.onnx: empty file/ },
    { what: 'a truncated model (first half of a fixture)', file: () => truncated, expect: /truncated\.onnx: truncated ONNX model/ },
    { what: 'a JPEG renamed .onnx', file: () => jpeg, expect: /photo\.onnx: this is a JPEG image, not an ONNX model/ },
    { what: 'a valid ONNX model that is not a VAR', file: () => path.join(GELU_STEPS, 'vqvae_decoder.onnx'), expect: /not a VAR/ },
    { what: 'a missing external-data file', file: () => ext, expect: /model\.onnx: missing external data file 'model\.onnx\.data'/ },
    { what: 'a file that does not exist', file: () => path.join(dir, 'nope.onnx'), expect: /nope\.onnx: cannot read \(ENOENT\)/ },
  );
});

after(() => rmDir(dir));

const STACK = /^\s+at .+(:\d+:\d+\)?)$/m;

test('cli: bad input gives one line on stderr, non-zero exit, no stack trace', () => {
  assert.ok(cases.length >= 6);
  for (const c of cases) {
    const r = runCli(['inspect', c.file()]);
    assert.notStrictEqual(r.status, 0, `${c.what}: exit status`);
    assert.notStrictEqual(r.status, null, `${c.what}: killed`);
    assert.strictEqual(r.stdout, '', `${c.what}: nothing on stdout`);
    assert.ok(r.stderr.endsWith('\n'), `${c.what}: stderr ends with a newline: ${JSON.stringify(r.stderr)}`);
    const lines = r.stderr.trimEnd().split('\n');
    assert.strictEqual(lines.length, 1, `${c.what}: exactly one line, got ${JSON.stringify(r.stderr)}`);
    assert.match(lines[0], /^moefy: /, c.what);
    assert.match(lines[0], c.expect, c.what);
    assert.doesNotMatch(r.stderr, STACK, `${c.what}: no stack trace`);
    assert.doesNotMatch(r.stderr, /internal error/, `${c.what}: a user error, not an internal one`);
  }
});

test('cli: --verbose shows the stack trace', () => {
  for (const c of cases) {
    const r = runCli(['inspect', c.file(), '--verbose']);
    assert.notStrictEqual(r.status, 0, c.what);
    assert.match(r.stderr, c.expect, c.what);
    assert.match(r.stderr, STACK, `${c.what}: stack trace with --verbose: ${JSON.stringify(r.stderr)}`);
    assert.ok(r.stderr.trimEnd().split('\n').length > 1, c.what);
  }
});
