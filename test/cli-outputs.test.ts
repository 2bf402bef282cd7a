// Issue 24: what a command writes is whole or absent, and what it prints agrees with itself. A full disk (a tiny
// tmpfs in a private mount namespace; skipped with the reason where none can be made) leaves no csv without its
// plot and no router-map folder; a reconversion without --external-data removes its own earlier `<output>.data` (and
// only that); a threshold prints the same in convert, inspect and eval; a one-scale step graph says "scale 10".
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fixture, rmDir, tmpDir } from './helpers/fixtures';
import { BIN, inNamespace, oneLine, runMoefy, tinyWorkFolder } from './helpers/cli-run';

let W = '', IN = '', CALIB = '', MOE = '';
const roots: string[] = [];
const fresh = (tag: string) => {
  const d = tmpDir(tag);
  roots.push(d);
  return d;
};
const moefy = (args: string[]) => runMoefy(args, { cwd: W, tmp: fresh('out-tmp') });

before(async () => {
  W = fresh('out');
  ({ IN, CALIB, MOE } = await tinyWorkFolder(W, '0.5675', fresh('out-tmp')));
});

after(() => roots.forEach(rmDir));

/** `moefy …args` inside a private mount namespace with a tmpfs of `kib` KiB at `disk`: status, stderr, what is left on it and in TMPDIR. */
function onSmallDisk(kib: number, args: (disk: string) => string[]): { status: number; stderr: string; left: string[]; tmp: string[] } | null {
  const disk = fresh('out-disk'), tmp = fresh('out-tmp'), res = path.join(fresh('out-res'), 'r');
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const script = [
    `mount -t tmpfs -o size=${kib}k tmpfs ${q(disk)} || exit 99`,
    `cd ${q(W)}; TMPDIR=${q(tmp)} ${q(process.execPath)} ${q(BIN)} ${args(disk).map(q).join(' ')} >/dev/null 2>${q(res + '.err')}; echo $? >${q(res + '.rc')}`,
    `find ${q(disk)} -mindepth 1 >${q(res + '.left')}; ls -A ${q(tmp)} >${q(res + '.tmp')}`,
  ].join('\n');
  const r = inNamespace(script, fresh('out-probe'));
  if (!r) return null;
  assert.equal(r.status, 0, r.stderr);
  const lines = (f: string) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean);
  return { status: Number(fs.readFileSync(res + '.rc', 'utf8')), stderr: fs.readFileSync(res + '.err', 'utf8'), left: lines(res + '.left'), tmp: lines(res + '.tmp') };
}

test('a full disk leaves no part of a set of outputs: no csv without its plot, no router-map folder', (t) => {
  // The csv (7 KB) and json (53 KB) fit in 96 KiB, the plot (110 KB) does not.
  const sweep = onSmallDisk(96, (d) => ['eval', 'sweep', IN, MOE, '--inputs', CALIB, '--out', path.join(d, 'sweep')]);
  if (!sweep) {
    t.skip('unshare -m is not permitted here (no private mount namespace): a tmpfs cannot be mounted');
    return;
  }
  oneLine('sweep on a full disk', sweep, /^moefy: .*sweep\.png: cannot write: no space left on device \(ENOSPC\)$/);
  assert.deepEqual(sweep.left, [], 'nothing of the sweep left on the disk');
  assert.deepEqual(sweep.tmp, []);
  // One map (25 KB) fits in 40 KiB, two do not.
  const maps = onSmallDisk(40, (d) => ['eval', IN, MOE, '--inputs', CALIB, '--router-maps', path.join(d, 'maps')]);
  oneLine('router maps on a full disk', maps!, /^moefy: .*router_map_scale\d+\.png: cannot write: no space left on device \(ENOSPC\)$/);
  assert.deepEqual(maps!.left, [], 'no router-map folder left');
  assert.deepEqual(maps!.tmp, []);
});

test('a set of outputs in a folder that does not exist yet is made whole, parents included', () => {
  const dir = path.join(fresh('out-set'), 'a', 'b');
  const r = moefy(['eval', IN, MOE, '--inputs', CALIB, '--router-maps', dir, '--map-scales', '9,10']);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['router_map_scale10.png', 'router_map_scale9.png']);
  assert.deepEqual(fs.readdirSync(path.dirname(dir)), ['b'], 'no temporary beside it');
  assert.deepEqual(r.tmpLeft, []);
});

test('reconverting to the same -o: our own earlier <output>.data is removed when the new model does not use it, a stranger\'s is kept', () => {
  const d = fresh('out-stale');
  const out = path.join(d, 'm.onnx');
  const conv = [IN, '--experts', '4', '--from-scale', '8', '--calib', CALIB, '--router-epochs', '2', '-o', out];
  assert.equal(moefy([...conv, '--external-data']).status, 0);
  assert.ok(fs.existsSync(`${out}.data`));
  const again = moefy([...conv, '--external-data']);
  assert.match(again.stdout, new RegExp(`wrote .*m\\.onnx, .*m\\.onnx\\.data, .*m\\.json\\n$`), 'rewritten, not removed');
  const inline = moefy(conv);
  assert.equal(inline.status, 0, inline.stderr);
  assert.match(inline.stdout, /wrote .*m\.onnx, .*m\.json; removed .*m\.onnx\.data \(the earlier output's weights, which the new model does not use\)\n$/);
  assert.deepEqual(fs.readdirSync(d).sort(), ['m.json', 'm.onnx']);
  // A .data the earlier output did not reference is not ours: it stays.
  fs.writeFileSync(`${out}.data`, 'someone else\'s');
  const kept = moefy([...conv, '--json']);
  assert.equal(kept.status, 0, kept.stderr);
  assert.deepEqual(JSON.parse(kept.stdout).removed, []);
  assert.equal(fs.readFileSync(`${out}.data`, 'utf8'), 'someone else\'s');
});

test('a threshold prints the same in convert, inspect and eval (rounded as the float32 the model holds)', () => {
  // 0.5675 is a tie at 3 decimals in float64 (→ 0.568) but not as float32 (0.56749999 → 0.567), the model's type.
  const conv = moefy([IN, '--experts', '4', '--from-scale', '8', '--calib', CALIB, '--router-epochs', '2', '--threshold', '0.5675', '-o', path.join(fresh('out-thr'), 'm.onnx')]);
  assert.equal(conv.status, 0, conv.stderr);
  const fromConvert = conv.stdout.split('\n').filter((l) => /^(8|9|10) /.test(l)).map((l) => l.trim().split(/\s+/)[3]);
  const inspect = moefy(['inspect', MOE]);
  const fromInspect = inspect.stdout.split('\n').filter((l) => /^(8|9|10) /.test(l)).map((l) => l.trim().split(/\s+/).pop());
  const ev = moefy(['eval', IN, MOE, '--inputs', CALIB]);
  const fromEval = /^thresholds (.*), MoE from scale 8$/m.exec(ev.stdout)![1].split(',').slice(7);
  assert.deepEqual(fromConvert, ['0.567', '0.567', '0.567']);
  assert.deepEqual(fromInspect, fromConvert);
  assert.deepEqual(fromEval, fromConvert);
});

test('a one-scale step graph says "scale 10", not "scales 10…10"', () => {
  const r = moefy([fixture('var_tiny_step_last_static.onnx'), '--experts', '4', '--from-scale', '10', '--calib', fixture('var_tiny_step_last_static_io'), '--router-epochs', '2', '-o', path.join(fresh('out-one'), 'm.onnx')]);
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stdout + r.stderr, /scales 10…10/);
  assert.match(r.stdout, /^thresholds .* thresholds [\d.]+ for scale 10, chosen for a budget of 0\.6 of the dense FFN FLOPs on scale 10,/m);
  assert.match(r.stdout, /; MoE scale 10: \d+\.\d%/);
});
