// The exporter's refusals and interruptions: bad input is one line `moefy_export: …` and exit 1, found before the
// slow work; Ctrl-C and SIGTERM end with 130 / 143 and leave nothing behind (no -o, no temporary folder).
import { test, before, after } from 'node:test';
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { rmDir, tmpDir } from './helpers/fixtures';
import { assertRefused, runCheck, runExporter, startExporter, VAR_CODE } from './helpers/python-export';

let dir = '';
let ckpt = '';
let vae = '';

before(() => {
  dir = tmpDir('export-err');
  runCheck(['checkpoints', '--var-code', VAR_CODE, '--depth', '1', '--seed', '0', '-o', dir]);
  ckpt = path.join(dir, 'var.pth');
  vae = path.join(dir, 'vae.pth');
});

after(() => rmDir(dir));

test('export: bad input is one line and exit 1, nothing written', { timeout: 600_000 }, () => {
  const out = path.join(dir, 'out');
  const junk = path.join(dir, 'junk.pth');
  fs.writeFileSync(junk, Buffer.from('this is not a checkpoint\n'.repeat(40)));
  const vocab512 = path.join(dir, 'vae512.pth');
  runCheck(['fake-vae', '--vocab', '512', '-o', vocab512]);
  const notVar = path.join(dir, 'not-var');
  fs.mkdirSync(notVar);
  const busy = path.join(dir, 'busy');
  fs.mkdirSync(busy);
  fs.writeFileSync(path.join(busy, 'notes.txt'), 'mine');
  const ok = ['--var-code', VAR_CODE, '--ckpt', ckpt, '--vae', vae];
  const cases: [string, string[], RegExp][] = [
    ['a missing checkpoint', ['--var-code', VAR_CODE, '--ckpt', path.join(dir, 'nope.pth'), '--vae', vae, '-o', out], /--ckpt .*nope\.pth: no such file/],
    ['the VQVAE given as the VAR', ['--var-code', VAR_CODE, '--ckpt', vae, '--vae', vae, '-o', out], /--ckpt .*vae\.pth: not a VAR transformer checkpoint \(no tensor class_emb\.weight\)/],
    ['a file that is not a checkpoint', ['--var-code', VAR_CODE, '--ckpt', junk, '--vae', vae, '-o', out], /--ckpt .*junk\.pth: not a PyTorch checkpoint/],
    ['the VAR given as the VQVAE', ['--var-code', VAR_CODE, '--ckpt', ckpt, '--vae', ckpt, '-o', out], /--vae .*var\.pth: not a VAR VQVAE checkpoint/],
    ['a mismatched VQVAE', ['--var-code', VAR_CODE, '--ckpt', ckpt, '--vae', vocab512, '-o', out], /--vae .*vae512\.pth does not match --ckpt .*: the VQVAE has 512 codes of width 32, the VAR 4096/],
    ['a patch layout the checkpoint does not have', [...ok, '--patch-nums', '1,2,3,4,6,9,13,18,24,32', '-o', out], /--patch-nums 1,2,3,4,6,9,13,18,24,32 does not fit .*var\.pth \(1,2,3,4,5,6,8,10,13,16\)/],
    ['--shared-aln on a checkpoint without it', [...ok, '--shared-aln', '-o', out], /--shared-aln: .*var\.pth has an AdaLN per block/],
    ['not VAR\'s code', ['--var-code', notVar, '--ckpt', ckpt, '--vae', vae, '-o', out], /--var-code .*not-var: not a VAR checkout/],
    ['--random without --depth', ['--var-code', VAR_CODE, '--random', '-o', out], /--random needs --depth/],
    ['-o a folder of other files', [...ok, '-o', busy], /-o .*busy: a folder with other files in it/],
    ['--vae-from a folder that is not a pipeline', [...ok, '--vae-from', busy, '-o', out], /--vae-from .*busy: not a pipeline folder/],
    ['an unknown flag', [...ok, '-o', out, '--fp8'], /unrecognized arguments: --fp8/],
    ['no -o', ok, /the following arguments are required: -o/],
  ];
  for (const [what, args, expect] of cases) {
    assertRefused(runExporter(args, 120_000), expect, what);
    assert.ok(!fs.existsSync(out), `${what}: no output`);
  }
  assert.strictEqual(fs.readFileSync(path.join(busy, 'notes.txt'), 'utf8'), 'mine', 'the refused -o is untouched');
  assert.deepStrictEqual(fs.readdirSync(dir).filter((n) => n.startsWith('.')), [], 'no temporary folder');
});

for (const [signal, code, word] of [['SIGTERM', 143, 'terminated'], ['SIGINT', 130, 'interrupted']] as const) {
  test(`export: ${signal} during the export exits ${code} and leaves nothing behind`, { timeout: 300_000 }, async () => {
    const out = path.join(dir, `sig-${code}`);
    // random weights and a random VQVAE: the decoder's export makes the run long enough to be caught in the middle
    const child = startExporter(['--var-code', VAR_CODE, '--random', '--depth', '1', '-o', out]);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const done = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    const started = Date.now();
    while (!/moefy_export: export var_full\.onnx/.test(stderr) && Date.now() - started < 240_000) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(fs.readdirSync(dir).some((n) => n.startsWith(`.sig-${code}.moefy-export-`)), `the temporary folder exists while it runs:\n${stderr}`);
    child.kill(signal);
    assert.strictEqual(await done, code, stderr);
    assert.match(stderr.trimEnd().split('\n').pop()!, new RegExp(`^moefy_export: ${word}$`));
    assert.doesNotMatch(stderr, /Traceback/);
    assert.ok(!fs.existsSync(out), 'no output');
    assert.deepStrictEqual(fs.readdirSync(dir).filter((n) => n.startsWith('.')), [], 'the temporary folder is gone');
  });
}
