// Issue 11: moefy never harms a user's files and says plainly what went wrong. Every case runs the CLI as a child
// process with TMPDIR pointed at a fresh folder, and checks: the exit code, exactly one `moefy: …` line on stderr
// naming the problem (no stack trace, no "internal error"), nothing left in the temp dir or the output folder, and
// every input file's bytes unchanged (SHA-256 before and after). The read-only folder and the full disk run in a
// private mount namespace (`unshare -m`: a read-only bind mount, a tiny tmpfs); where that is impossible the case
// is skipped with the reason.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { Tensor } from 'onnxruntime-common';
import { readTensorSet, writeTensorSet } from '../src/io';
import { loadModel, saveModel } from '../src/onnx/io';
import { fixture, rmDir, tmpDir } from './helpers/fixtures';
import { BIN, inNamespace as inNamespaceAt, interruptWhen as interruptAt, oneLine, Run, runMoefy, sha, snapshot as snapshotOf } from './helpers/cli-run';

let W = ''; // the work folder: inputs and outputs side by side, as a user has them
let IN = '', EXT = '', CALIB = '', NANCALIB = '', BADLABEL = '';
const roots: string[] = [];

/** Every file under W with its hash: the inputs a case must leave untouched. */
const snapshot = () => snapshotOf(W);

function freshTmp(): string {
  const t = tmpDir('hard-tmp');
  roots.push(t);
  return t;
}

const moefy = (args: string[], o: { timeoutMs?: number } = {}): Run => runMoefy(args, { cwd: W, tmp: freshTmp(), timeoutMs: o.timeoutMs });

/** A bad-input case: one line, exit 1, nothing left in the temp dir, the work folder byte-for-byte as before. */
function refuses(what: string, args: string[], expect: RegExp): void {
  const before = snapshot();
  const r = moefy(args);
  oneLine(what, r, expect);
  assert.deepEqual(r.tmpLeft, [], `${what}: nothing left in the temp dir`);
  assert.deepEqual([...snapshot()], [...before], `${what}: the work folder is unchanged (no new file, every input's bytes the same)`);
}

const CONV = ['--experts', '4', '--from-scale', '8', '--synth-samples', '2', '--router-epochs', '2'];

before(async () => {
  W = tmpDir('hard');
  roots.push(W);
  IN = path.join(W, 'in.onnx');
  fs.copyFileSync(fixture('var_tiny_full.onnx'), IN);
  EXT = path.join(W, 'ext.onnx');
  saveModel(loadModel(IN), EXT, { externalData: true });
  const io = await readTensorSet(fixture('var_tiny_full_io'));
  const x = io.x_BLCv_wo_first_l, label = io.label_B;
  CALIB = path.join(W, 'calib');
  await writeTensorSet(CALIB, { label_B: label, x_BLCv_wo_first_l: x });
  const xs = Float32Array.from(x.data as Float32Array);
  xs[1234] = NaN;
  NANCALIB = path.join(W, 'nan.npz');
  await writeTensorSet(NANCALIB, { label_B: label, x_BLCv_wo_first_l: new Tensor('float32', xs, x.dims) });
  BADLABEL = path.join(W, 'badlabel.npz');
  await writeTensorSet(BADLABEL, { label_B: new Tensor('int64', BigInt64Array.from([0n, 5000n]), [2]), x_BLCv_wo_first_l: x });
  fs.symlinkSync(IN, path.join(W, 'link.onnx'));
  fs.mkdirSync(path.join(W, 'sub'));
  fs.copyFileSync(IN, path.join(W, 'prefix.onnx'));
});

after(() => {
  for (const r of roots) {
    spawnSync('chmod', ['-R', 'u+w', r]);
    rmDir(r);
  }
});

test('output paths that would harm an input, or cannot be written, are refused before any work', () => {
  refuses('-o the input model', [IN, ...CONV, '-o', IN], /-o .*in\.onnx: would overwrite the input model/);
  refuses("-o the input's external data", ['convert', EXT, ...CONV, '-o', `${EXT}.data`], /would overwrite the input model's external data/);
  refuses('-o a symlink to the input', [IN, ...CONV, '-o', path.join(W, 'link.onnx')], /link\.onnx: would overwrite the input model .*in\.onnx/);
  refuses('-o the calibration data', [IN, ...CONV, '--calib', CALIB, '-o', path.join(CALIB, 'manifest.json')], /would overwrite the calibration data \(--calib\)/);
  refuses('-o a --kv-prefix model', [IN, ...CONV, '--kv-prefix', path.join(W, 'prefix.onnx'), '-o', path.join(W, 'prefix.onnx')], /would overwrite a --kv-prefix model/);
  // out.onnx's report is out.json: here that is the calibration data.
  fs.copyFileSync(NANCALIB, path.join(W, 'c2.json'));
  refuses('-o whose report is an input', [IN, ...CONV, '--calib', path.join(W, 'c2.json'), '-o', path.join(W, 'c2.onnx')], /-o .*c2\.onnx: the report .*c2\.json: would overwrite the calibration data/);
  fs.rmSync(path.join(W, 'c2.json'));
  refuses('-o an existing folder', [IN, ...CONV, '-o', path.join(W, 'sub')], /sub: exists and is a folder/);
  refuses('-o in a missing folder', [IN, ...CONV, '-o', path.join(W, 'nope', 'out.onnx')], /the folder .*nope does not exist/);
});

test('-o a FIFO or a device node made in a temp dir is refused, and the node is left as it was', () => {
  const d = freshTmp();
  const fifo = path.join(d, 'fifo.onnx');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  refuses('-o a FIFO', [IN, ...CONV, '-o', fifo], /fifo\.onnx: exists and is a FIFO/);
  assert.ok(fs.statSync(fifo).isFIFO(), 'still a FIFO');
  const dev = path.join(d, 'full.onnx');
  // A character device like /dev/full (1, 7); mknod needs CAP_MKNOD, else the system's /dev/full is used.
  const made = spawnSync('mknod', [dev, 'c', '1', '7']).status === 0;
  const target = made ? dev : '/dev/full';
  refuses('-o a device node', [IN, ...CONV, '-o', target], /exists and is a character device/);
  assert.ok(fs.statSync(target).isCharacterDevice(), 'still a device node');
});

test('bad options: one line in the user\'s words, before any work', () => {
  const cases: [string, string[], RegExp][] = [
    ['--router-width 0', ['--router-width', '0'], /^moefy: --router-width must be a whole number ≥ 1 \(got 0\)$/],
    ['--max-tokens 0', ['--max-tokens', '0'], /--max-tokens must be a whole number ≥ 2: router training holds some of the tokens out/],
    ['--seed abc', ['--seed', 'abc'], /--seed must be a whole number ≥ 0 \(the value given is not a number\)/],
    ['--seed 1.5', ['--seed', '1.5'], /--seed must be a whole number ≥ 0 \(got 1\.5\)/],
    ["--threshold ''", ['--threshold', ''], /--threshold needs a value/],
    ['--budget 0', ['--budget', '0'], /--budget must be a number in \(0, 1\]/],
    ['--kv-prefix /nope.onnx', ['--kv-prefix', '/nope.onnx'], /--kv-prefix \/nope\.onnx: no such file or folder/],
    ['--calib missing', ['--calib', path.join(W, 'nothing')], /--calib .*nothing: no such file or folder/],
  ];
  for (const [what, extra, expect] of cases) refuses(what, [IN, ...CONV, ...extra], expect);
  refuses('--router-epochs 0', [IN, '--experts', '4', '--from-scale', '8', '--router-epochs', '0'], /--router-epochs must be a whole number ≥ 1/);
  refuses('--synth-samples 0', [IN, '--experts', '4', '--from-scale', '8', '--synth-samples', '0'], /--synth-samples must be a whole number ≥ 1/);
  refuses('--experts 3 (does not divide H)', [IN, '--experts', '3', '--from-scale', '8'], /--experts 3 does not divide the FFN hidden size/);
  refuses('--from-scale 11', [IN, '--experts', '4', '--from-scale', '11'], /--from-scale 11 is out of range/);
  refuses('a flag twice', [IN, ...CONV, '--seed', '1', '--seed', '2'], /--seed was given more than once/);
  refuses('a missing model', ['convert', path.join(W, 'nope.onnx'), ...CONV], /model .*nope\.onnx: no such file or folder/);
  refuses('eval --limit 0', ['eval', IN, IN, '--inputs', CALIB, '--limit', '0'], /--limit must be a whole number ≥ 1/);
  refuses('bench --reps 0', ['bench', IN, IN, '--reps', '0'], /--reps must be a whole number ≥ 1/);
  refuses('eval sweep without --out', ['eval', 'sweep', IN, IN, '--inputs', CALIB], /Missing required argument: out/);
});

test('calibration, run and eval inputs: a NaN and a label outside the classes are named before anything runs', () => {
  refuses('NaN in --calib', [IN, ...CONV, '--calib', NANCALIB], /tensor 'x_BLCv_wo_first_l' holds NaN at index \[0, 38, 18\] \(flat 1234\)/);
  refuses('label 5000', [IN, ...CONV, '--calib', BADLABEL], /label 5000 in 'label_B' at index \[1\] is outside the model's classes 0…\d+ \(and \d+, the null class/);
  refuses('run: label 5000', ['run', IN, '--inputs', BADLABEL], /--inputs .*badlabel\.npz: label 5000 in 'label_B' at index \[1\] is outside the model's classes/);
  refuses('eval: label 5000', ['eval', IN, IN, '--inputs', BADLABEL], /--inputs .*badlabel\.npz: label 5000 in 'label_B'/);
  refuses('eval: NaN', ['eval', IN, IN, '--inputs', NANCALIB], /--inputs .*nan\.npz: tensor 'x_BLCv_wo_first_l' holds NaN at index \[0, 38, 18\]/);
});

test('run: inputs of the wrong shape or type, and -o at the inputs, are said in moefy\'s words', async () => {
  const io = await readTensorSet(CALIB);
  const short = path.join(W, 'short.npz');
  const x = io.x_BLCv_wo_first_l;
  await writeTensorSet(short, { label_B: io.label_B, x_BLCv_wo_first_l: new Tensor('float32', (x.data as Float32Array).slice(0, 2 * 10 * 32), [2, 10, 32]) });
  const f64 = path.join(W, 'f64.npz');
  await writeTensorSet(f64, { label_B: new Tensor('int32', Int32Array.from([0, 1]), [2]), x_BLCv_wo_first_l: x });
  refuses('run: wrong shape', ['run', IN, '--inputs', short], /--inputs .*short\.npz: 'x_BLCv_wo_first_l' has shape \[2, 10, 32\], the model expects \[.*679, 32\]/);
  refuses('run: wrong type', ['run', IN, '--inputs', f64], /'label_B' is int32, the model expects int64/);
  refuses('run: -o the inputs', ['run', IN, '--inputs', short, '-o', short], /would overwrite the inputs \(--inputs\)/);
  fs.rmSync(short);
  fs.rmSync(f64);
});

test('convert: the explicit subcommand, full paths, --json, --quiet; nothing left in the temp dir', () => {
  const out = path.join(W, 'sub', 'ok.onnx');
  const r = moefy(['convert', IN, ...CONV, '-o', out]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, ${path.join(W, 'sub', 'ok.json').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\n`));
  assert.deepEqual(r.tmpLeft, []);
  // Warnings go to stderr, each one line, and into the report.
  const warnings = r.stderr.trimEnd().split('\n');
  assert.ok(warnings.every((l) => l.startsWith('moefy: warning: ')), r.stderr);
  const report = JSON.parse(fs.readFileSync(path.join(W, 'sub', 'ok.json'), 'utf8'));
  assert.deepEqual(warnings.map((l) => l.slice('moefy: warning: '.length)), report.warnings);
  const j = moefy([IN, ...CONV, '-o', out, '--json']);
  assert.equal(j.status, 0, j.stderr);
  const parsed = JSON.parse(j.stdout);
  assert.deepEqual(parsed.wrote, [out, path.join(W, 'sub', 'ok.json')]);
  assert.equal(parsed.totals.ffnFlopsDense, report.totals.ffnFlopsDense);
  const q = moefy([IN, ...CONV, '-o', out, '--quiet']);
  assert.equal(q.status, 0, q.stderr);
  assert.equal(q.stdout, '');
  assert.deepEqual(fs.readdirSync(path.join(W, 'sub')).sort(), ['ok.json', 'ok.onnx']);
  fs.rmSync(path.join(W, 'sub', 'ok.json'));
  fs.rmSync(out);
});

/** Runs a shell script in a private mount namespace; null when the system does not allow one. */
const inNamespace = (script: string) => inNamespaceAt(script, freshTmp());

/** The case as a shell script: mount, run moefy (TMPDIR fresh), then report status, stderr, and what is left. */
function mountedCase(mount: string, dir: string, out: string): string {
  const tmp = freshTmp();
  const res = path.join(freshTmp(), 'result');
  return [
    'set -e',
    mount,
    `set +e`,
    `TMPDIR=${tmp} ${process.execPath} ${BIN} ${IN} ${CONV.join(' ')} -o ${out} 2>${res}.err >/dev/null; echo $? >${res}.rc`,
    `ls -A ${dir} >${res}.left; ls -A ${tmp} >${res}.tmp`,
    `cat ${res}.rc; printf '%s\\n' '--err'; cat ${res}.err; printf '%s\\n' '--left'; cat ${res}.left; printf '%s\\n' '--tmp'; cat ${res}.tmp`,
  ].join('\n');
}

function parseMounted(stdout: string): { status: number; stderr: string; left: string[]; tmp: string[] } {
  const [rc, rest] = stdout.split('--err\n');
  const [err, rest2] = rest.split('--left\n');
  const [left, tmp] = rest2.split('--tmp\n');
  const list = (s: string) => s.split('\n').filter(Boolean);
  return { status: Number(rc.trim()), stderr: err, left: list(left), tmp: list(tmp) };
}

test('a read-only folder: refused before any work, one line naming the folder', (t) => {
  const ro = freshTmp();
  fs.writeFileSync(path.join(ro, 'keep.txt'), 'x');
  const before = snapshot();
  const r = inNamespace(mountedCase(`mount --bind ${ro} ${ro} && mount -o remount,bind,ro ${ro}`, ro, path.join(ro, 'out.onnx')));
  if (!r) {
    t.skip('unshare -m is not permitted here (no private mount namespace): the read-only bind mount cannot be made');
    return;
  }
  assert.equal(r.status, 0, r.stderr);
  const m = parseMounted(r.stdout);
  oneLine('read-only folder', m, /-o .*out\.onnx: the folder .*: cannot write there: read-only file system \(EROFS\)/);
  assert.deepEqual(m.left, ['keep.txt'], 'nothing written in the read-only folder');
  assert.deepEqual(m.tmp, [], 'nothing left in the temp dir');
  assert.deepEqual([...snapshot()], [...before], 'inputs unchanged');
});

test('a read-only folder for a non-root user (setpriv to nobody)', (t) => {
  const ro = freshTmp();
  fs.chmodSync(ro, 0o555);
  const tmp = freshTmp();
  fs.chmodSync(tmp, 0o777);
  // nobody must be able to read the repository and the model; a copy of the model in a world-readable folder.
  const pub = freshTmp();
  fs.chmodSync(pub, 0o755);
  fs.copyFileSync(IN, path.join(pub, 'in.onnx'));
  fs.chmodSync(path.join(pub, 'in.onnx'), 0o444);
  const hash = sha(path.join(pub, 'in.onnx'));
  const probe = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', `require(${JSON.stringify(BIN.replace(/bin\/moefy\.js$/, 'package.json'))})`]);
  if (probe.status !== 0) {
    t.skip(`setpriv to nobody is not possible here, or nobody cannot read the repository (${probe.stderr.toString().trim().split('\n')[0] || 'status ' + probe.status})`);
    return;
  }
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, BIN, path.join(pub, 'in.onnx'), ...CONV, '-o', path.join(ro, 'out.onnx')], { encoding: 'utf8', env: { ...process.env, TMPDIR: tmp }, timeout: 120_000 });
  oneLine('read-only folder (nobody)', r, /-o .*out\.onnx: the folder .*: cannot write there: permission denied \(EACCES\)/);
  assert.deepEqual(fs.readdirSync(ro), []);
  assert.deepEqual(fs.readdirSync(tmp), []);
  assert.equal(sha(path.join(pub, 'in.onnx')), hash);
});

test('a full disk (tiny tmpfs): too small is refused up front; full during the write leaves nothing', (t) => {
  const small = freshTmp();
  const r = inNamespace(mountedCase(`mount -t tmpfs -o size=64k tmpfs ${small}`, small, path.join(small, 'out.onnx')));
  if (!r) {
    t.skip('unshare -m is not permitted here (no private mount namespace): a tmpfs cannot be mounted');
    return;
  }
  const before = snapshot();
  assert.equal(r.status, 0, r.stderr);
  const m = parseMounted(r.stdout);
  oneLine('tiny tmpfs', m, /-o .*out\.onnx: the folder .* has 0\.\d MiB free; the output needs about 3\.8 MiB/);
  assert.deepEqual(m.left, []);
  assert.deepEqual(m.tmp, []);
  // Room for a model of the input's size (the up-front check passes) but not for the converted one (its routers
  // add ~10 KB at the default width): ENOSPC strikes during the write.
  const inSize = fs.statSync(IN).size;
  const kib = Math.ceil(inSize / 4096) * 4 + 4;
  const mid = freshTmp();
  const r2 = inNamespace(mountedCase(`mount -t tmpfs -o size=${kib}k tmpfs ${mid}`, mid, path.join(mid, 'out.onnx')))!;
  const m2 = parseMounted(r2.stdout);
  // The conversion ran (the disk filled at the end): its warnings come first, then the one error line.
  m2.stderr = m2.stderr.split('\n').filter((l) => !l.startsWith('moefy: warning: ')).join('\n');
  oneLine('full during the write', m2, /out\.onnx: cannot write: no space left on device \(ENOSPC\)/);
  assert.deepEqual(m2.left, [], 'no partial output');
  assert.deepEqual(m2.tmp, []);
  assert.deepEqual([...snapshot()], [...before]);
});

/**
 * Starts a conversion, sends `sig` while capture runs (capture's stage line is not on stdout yet; the capture session
 * is made from the model in memory, so there is no copy in the temp dir to wait for).
 */
async function interrupt(sig: 'SIGINT' | 'SIGTERM'): Promise<{ code: number | null; stderr: string; tmpLeft: string[]; outLeft: string[]; sawCopy: boolean }> {
  const tmp = freshTmp();
  const out = freshTmp();
  // 2048 samples: capture takes seconds (256 took 1.2 s, over before the signal).
  const child = spawn(process.execPath, [BIN, IN, '--experts', '4', '--from-scale', '8', '--synth-samples', '2048', '-o', path.join(out, 'm.onnx')], { cwd: W, env: { ...process.env, TMPDIR: tmp } });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  // Capture is the first stage for a repaired (GELU) model and follows relufy otherwise: wait for relufy's line
  // or 1.5 s (loading the model), then signal while capture's line is not out yet.
  let exitedEarly = false;
  void exited.then(() => (exitedEarly = true));
  for (let i = 0; i < 30 && !/^relufy /m.test(stdout); i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 200));
  const sawCopy = !/^capture /m.test(stdout) && !exitedEarly;
  child.kill(sig);
  const code = await exited;
  return { code, stderr, tmpLeft: fs.readdirSync(tmp), outLeft: fs.readdirSync(out), sawCopy };
}

test('SIGINT during capture: exit 130, one line, nothing left behind', async () => {
  const before = snapshot();
  const r = await interrupt('SIGINT');
  assert.ok(r.sawCopy, 'the signal came during capture');
  const err = r.stderr.split('\n').filter((l) => l && !/^(relufy|capture) /.test(l) && !l.startsWith('moefy: warning: '));
  oneLine('SIGINT', { status: r.code, stderr: err.join('\n') + '\n' }, /^moefy: interrupted \(SIGINT\); removed temporary files$/, 130);
  assert.deepEqual(r.tmpLeft, [], 'temp dir empty');
  assert.deepEqual(r.outLeft, [], 'output folder empty');
  assert.deepEqual([...snapshot()], [...before]);
});

test('SIGTERM during capture: exit 143, nothing left behind', async () => {
  const r = await interrupt('SIGTERM');
  assert.ok(r.sawCopy);
  assert.equal(r.code, 143, r.stderr);
  assert.match(r.stderr, /^moefy: interrupted \(SIGTERM\); removed temporary files$/m);
  assert.deepEqual(r.tmpLeft, []);
  assert.deepEqual(r.outLeft, []);
});

test('run and bench: --json is one JSON document on stdout, --quiet prints nothing (run) or the ratio (bench)', () => {
  const step = fixture('var_tiny_step0.onnx');
  const io = fixture('var_tiny_step0_io');
  const r = moefy(['run', step, '--inputs', io, '--json']);
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.model, step);
  // The fixture's own outputs, by name (its manifest holds the expected outputs beside the inputs).
  const manifest = JSON.parse(fs.readFileSync(path.join(io, 'manifest.json'), 'utf8'));
  const logits = j.outputs.find((o: { name: string }) => o.name === 'logits_BlV');
  assert.deepEqual(logits.dims, manifest.logits_BlV.shape);
  assert.deepEqual(r.tmpLeft, []);
  const q = moefy(['run', step, '--inputs', io, '--quiet']);
  assert.equal(q.status, 0, q.stderr);
  assert.equal(q.stdout, '');
  const moeFile = path.join(freshTmp(), 'm.onnx');
  assert.equal(moefy([IN, ...CONV, '-o', moeFile, '-q']).status, 0);
  const b = moefy(['bench', IN, moeFile, '--reps', '1', '--json']);
  assert.equal(b.status, 0, b.stderr);
  const bj = JSON.parse(b.stdout);
  assert.ok(Math.abs(bj.ratio - bj.moe.ms / bj.dense.ms) < 1e-12);
  const bq = moefy(['bench', IN, moeFile, '--reps', '1', '--quiet']);
  assert.match(bq.stdout, /^\d+\.\d{3}\n$/);
});

test('SIGINT while the routers train in worker threads: exit 130, one line, no abort, nothing left behind', async () => {
  const tmp = freshTmp();
  const out = freshTmp();
  const child = spawn(process.execPath, [BIN, IN, '--experts', '4', '--from-scale', '8', '--router-epochs', '20000', '-o', path.join(out, 'm.onnx')], { cwd: W, env: { ...process.env, TMPDIR: tmp } });
  let stderr = '', stdout = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.on('data', (d) => (stdout += d));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  for (let i = 0; i < 1200 && !/^permute /m.test(stdout); i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 500));
  assert.doesNotMatch(stdout, /^routers /m, 'the signal came while the routers trained');
  child.kill('SIGINT');
  const code = await exited;
  // Exiting under a worker inside ONNX Runtime aborts ('terminate called …', SIGABRT): the handler waits for them.
  assert.doesNotMatch(stderr, /terminate called/);
  const err = stderr.split('\n').filter((l) => l && !l.startsWith('moefy: warning: '));
  oneLine('SIGINT in routers', { status: code, stderr: err.join('\n') + '\n' }, /^moefy: interrupted \(SIGINT\); removed temporary files$/, 130);
  assert.deepEqual(fs.readdirSync(tmp), []);
  assert.deepEqual(fs.readdirSync(out), []);
});

/** Starts `args`, waits until `ready` matches its output (if given), then `settle` ms, sends SIGINT; the exit code and what is left. */
async function interruptWhen(args: string[], ready: RegExp | null, settle: number, out: string): Promise<{ code: number | null; stdout: string; stderr: string; tmpLeft: string[]; outLeft: string[] }> {
  const r = await interruptAt(args, { cwd: W, tmp: freshTmp(), ready, settle, signals: ['SIGINT'] });
  return { code: r.code, stdout: r.stdoutAtSignal, stderr: r.stderr, tmpLeft: r.tmpLeft, outLeft: fs.readdirSync(out) };
}

test('SIGINT while the experts are repaired in worker threads: exit 130, one line, no abort, nothing left behind', async () => {
  const out = freshTmp();
  const r = await interruptWhen([IN, '--experts', '4', '--from-scale', '8', '--repair', '--repair-epochs', '100000', '-o', path.join(out, 'm.onnx')], /^thresholds /m, 500, out);
  assert.doesNotMatch(r.stdout, /^repair /m, 'the signal came while the repair ran');
  assert.doesNotMatch(r.stderr, /terminate called/);
  const err = r.stderr.split('\n').filter((l) => l && !l.startsWith('moefy: warning: '));
  oneLine('SIGINT in repair', { status: r.code, stderr: err.join('\n') + '\n' }, /^moefy: interrupted \(SIGINT\); removed temporary files$/, 130);
  assert.deepEqual(r.tmpLeft, []);
  assert.deepEqual(r.outLeft, []);
});

test('SIGINT during eval generate --dump-calib: exit 130, no dump folder, no temporary left', async () => {
  const out = freshTmp();
  const steps = fixture('trained', 'gelu_steps');
  // 512 samples in batches of 8 run for a while; the signal comes once the sessions are open.
  const r = await interruptWhen(['eval', 'generate', '--steps', steps, '--vq', steps, '--samples', '512', '--dump-calib', path.join(out, 'cal')], null, 4000, out);
  const err = r.stderr.split('\n').filter((l) => l);
  oneLine('SIGINT in generate', { status: r.code, stderr: err.join('\n') + '\n' }, /^moefy: interrupted \(SIGINT\); removed temporary files$/, 130);
  assert.deepEqual(r.tmpLeft, []);
  assert.deepEqual(r.outLeft, [], 'no partial dump');
});
