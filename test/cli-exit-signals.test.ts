// Issue 24: a conversion stopped by a signal in any stage, or by its reader going away, ends cleanly. Each case runs
// the CLI as a child process with a private TMPDIR and checks: the exit status (130 SIGINT, 143 SIGTERM, 141 for a
// closed output pipe, as a shell reports a Unix tool killed by SIGPIPE), exactly one `moefy: interrupted` line (none
// for a closed pipe), no abort (`terminate called …`, status 134), nothing left in the temp dir or the output folder.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fixture, rmDir, tmpDir } from './helpers/fixtures';
import { BIN, interruptWhen, oneLine } from './helpers/cli-run';

let W = '', IN = '';
const roots: string[] = [];
const fresh = (tag: string) => {
  const d = tmpDir(tag);
  roots.push(d);
  return d;
};

before(() => {
  W = fresh('exit-sig');
  IN = path.join(W, 'in.onnx');
  fs.copyFileSync(fixture('var_tiny_full.onnx'), IN);
});

after(() => roots.forEach(rmDir));

/** stderr without the lines a conversion prints before the signal (warnings; stage lines go to stdout). */
const afterWarnings = (stderr: string) => stderr.split('\n').filter((l) => l && !l.startsWith('moefy: warning: ')).join('\n') + '\n';

// The tiny GELU model converts with repair by default: capture, relufy, cluster, permute, routers, thresholds, repair,
// insert. Each case signals once the stage before has printed its line, with options that make its stage long
// enough to be hit; `running` is the stage whose line must not be out when the signal goes.
const STAGES: { running: string; ready: RegExp | null; settle: number; extra: string[]; signals: NodeJS.Signals[] }[] = [
  { running: 'capture', ready: null, settle: 1200, extra: ['--synth-samples', '4096', '--router-epochs', '2'], signals: ['SIGTERM'] },
  { running: 'cluster', ready: /^relufy /m, settle: 0, extra: ['--synth-samples', '64', '--max-tokens', '20000', '--router-epochs', '2'], signals: ['SIGINT', 'SIGINT'] },
  { running: 'routers', ready: /^permute /m, settle: 300, extra: ['--router-epochs', '20000'], signals: ['SIGINT', 'SIGINT'] },
  { running: 'thresholds', ready: /^routers /m, settle: 0, extra: ['--router-epochs', '2', '--repair-epochs', '100000'], signals: ['SIGTERM', 'SIGTERM'] },
  { running: 'repair', ready: /^thresholds /m, settle: 300, extra: ['--router-epochs', '2', '--repair-epochs', '100000'], signals: ['SIGINT', 'SIGINT'] },
];

test('a signal in each conversion stage, once or twice (npx forwards Ctrl-C): 130 or 143, one line, no abort, nothing left', async () => {
  for (const st of STAGES) {
    const out = fresh('exit-sig-out');
    const tmp = fresh('exit-sig-tmp');
    const r = await interruptWhen([IN, '--experts', '4', '--from-scale', '8', ...st.extra, '-o', path.join(out, 'm.onnx')], { cwd: W, tmp, ready: st.ready, settle: st.settle, signals: st.signals });
    const what = `${st.signals.join('+')} while ${st.running} runs`;
    if (st.ready) assert.match(r.stdoutAtSignal, st.ready, `${what}: the stage before had ended`);
    if (st.running !== 'thresholds') assert.doesNotMatch(r.stdoutAtSignal, new RegExp(`^${st.running} `, 'm'), `${what}: the signal came before the stage ended`);
    assert.doesNotMatch(r.stderr, /terminate called|Aborted/, what);
    const sig = st.signals[0];
    oneLine(what, { status: r.code, stderr: afterWarnings(r.stderr) }, new RegExp(`^moefy: interrupted \\(${sig}\\); removed temporary files$`), sig === 'SIGINT' ? 130 : 143);
    assert.deepEqual(r.tmpLeft, [], `${what}: temp dir empty`);
    assert.deepEqual(fs.readdirSync(out), [], `${what}: output folder empty`);
  }
});

/** Starts `moefy …args` with its stdout a pipe that this side closes after `lines` lines (0: before any). */
async function closedPipe(args: string[], lines: number): Promise<{ code: number | null; stderr: string; tmpLeft: string[]; got: string }> {
  const tmp = fresh('exit-pipe-tmp');
  const child = spawn(process.execPath, [BIN, ...args], { cwd: W, env: { ...process.env, TMPDIR: tmp } });
  let stderr = '', got = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  if (lines === 0) child.stdout.destroy();
  else
    child.stdout.on('data', (d) => {
      got += d;
      if (got.split('\n').length > lines) child.stdout.destroy(); // `| head -${lines}` has what it wants and exits
    });
  return { code: await exited, stderr, tmpLeft: fs.readdirSync(tmp), got };
}

test('a closed output pipe (`moefy … | head -1`): exit 141, nothing on stderr but warnings, nothing left', async () => {
  const out = fresh('exit-pipe-out');
  const c = await closedPipe([IN, '--experts', '4', '--from-scale', '8', '--router-epochs', '2', '-o', path.join(out, 'm.onnx')], 1);
  assert.match(c.got, /^capture /, 'the first line came through');
  assert.equal(c.code, 141, c.stderr);
  assert.equal(afterWarnings(c.stderr), '\n', 'no error printed');
  assert.deepEqual(c.tmpLeft, []);
  assert.deepEqual(fs.readdirSync(out), [], 'the conversion stopped: no output');
  const r = await closedPipe(['run', IN, '--inputs', fixture('var_tiny_full_io')], 0);
  assert.equal(r.code, 141, r.stderr);
  assert.equal(afterWarnings(r.stderr), '\n', 'no error printed');
  assert.deepEqual(r.tmpLeft, []);
});

test('Ctrl-C during a progress bar gives the terminal its cursor and line wrap back', async (t) => {
  if (spawnSync('script', ['--version']).status !== 0) {
    t.skip('script(1) is not installed: no pseudo-terminal to draw a progress bar on');
    return;
  }
  const tmp = fresh('exit-tty-tmp');
  const pid = path.join(tmp, '..', `${path.basename(tmp)}.pid`);
  roots.push(pid);
  const cmd = `echo $$ > ${pid}; exec ${process.execPath} ${BIN} ${IN} --experts 4 --from-scale 8 --synth-samples 4096 -o ${path.join(tmp, 'm.onnx')}`;
  const child = spawn('script', ['-qefc', cmd, '/dev/null'], { cwd: W, env: { ...process.env, TMPDIR: tmp } });
  let tty = '';
  child.stdout.on('data', (d) => (tty += d));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  // The capture bar hides the cursor (ESC[?25l) and turns line wrap off (ESC[?7l) when it starts.
  for (let i = 0; i < 2400 && !tty.includes('\x1b[?25l'); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(tty.includes('\x1b[?25l') && tty.includes('\x1b[?7l'), `a bar was drawn: ${JSON.stringify(tty.slice(0, 200))}`);
  process.kill(Number(fs.readFileSync(pid, 'utf8')), 'SIGINT');
  assert.equal(await exited, 130, tty);
  const rest = tty.slice(tty.lastIndexOf('\x1b[?25l'));
  assert.ok(rest.includes('\x1b[?25h'), `cursor shown again after the last hide: ${JSON.stringify(rest.slice(-300))}`);
  assert.ok(tty.slice(tty.lastIndexOf('\x1b[?7l')).includes('\x1b[?7h'), 'line wrap on again');
  assert.match(tty, /moefy: interrupted \(SIGINT\); removed temporary files/);
  assert.deepEqual(fs.readdirSync(tmp), []);
});
