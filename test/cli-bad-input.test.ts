// Issue 24: bad input is one line in the user's words and exit 1, found before the slow work, with nothing left
// behind: inputs with 0 samples, damaged archives and tensor folders, out-of-range and value-less options, misspelled
// commands, and auxiliary models (--kv-prefix, --decoder, --vq, --steps, a pair for bench or eval) that are damaged,
// foreign or in the wrong place. Each case runs the CLI as a child process with a private TMPDIR and checks the exit
// status, exactly one `moefy: …` line on stderr, no stack trace, no "internal error", nothing left in the temp dir
// and the work folder unchanged (every file's SHA-256).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { readTensorSet, writeTensorSet } from '../src/io';
import { loadModel, saveModel } from '../src/onnx/io';
import { fixture, GELU_STEPS, repoRoot, rmDir, tmpDir } from './helpers/fixtures';
import { oneLine, runMoefy, snapshot, tinyWorkFolder } from './helpers/cli-run';

let W = '', IN = '', CALIB = '', ZERO = '', MOE = '', SMALL = '';
const roots: string[] = [];
const fresh = (tag: string) => {
  const d = tmpDir(tag);
  roots.push(d);
  return d;
};
const moefy = (args: string[]) => runMoefy(args, { cwd: W, tmp: fresh('bad-tmp') });

/** One line, exit 1, nothing left in the temp dir, the work folder as it was. */
function refuses(what: string, args: string[], expect: RegExp): void {
  const before = snapshot(W);
  const r = moefy(args);
  oneLine(what, r, expect);
  assert.deepEqual(r.tmpLeft, [], `${what}: nothing left in the temp dir`);
  assert.deepEqual([...snapshot(W)], [...before], `${what}: the work folder is unchanged`);
}

/** `file` written into W (random bytes, text, a copy of a fixture). */
function put(name: string, data: string | Uint8Array): string {
  const p = path.join(W, name);
  fs.writeFileSync(p, data);
  return p;
}

/** Random bytes that do not start like a protobuf field, nor like text. */
const junk = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i === 0 ? 0xfe : (i * 7919 + 13) % 256));

before(async () => {
  W = fresh('bad');
  ({ IN, CALIB, MOE } = await tinyWorkFolder(W, '0.2', fresh('bad-tmp')));
  const x = (await readTensorSet(CALIB)).x_BLCv_wo_first_l;
  ZERO = path.join(W, 'zero.npz');
  await writeTensorSet(ZERO, { label_B: new Tensor('int64', new BigInt64Array(0), [0]), x_BLCv_wo_first_l: new Tensor('float32', new Float32Array(0), [0, ...x.dims.slice(1)]) });
  SMALL = path.join(W, 'small.onnx');
  fs.copyFileSync(path.join(repoRoot, 'fixtures', 'small-var.onnx'), SMALL);
});

after(() => roots.forEach(rmDir));

test('inputs with 0 samples are refused by convert, eval, bench and run (no NaN table, no internal error)', () => {
  const zero = /zero\.npz: 'label_B' holds 0 samples \(shape \[0\]\); there is nothing to run on/;
  refuses('convert --calib', [IN, '--experts', '4', '--from-scale', '8', '--calib', ZERO, '-o', path.join(W, 'z.onnx')], zero);
  refuses('eval --inputs', ['eval', IN, MOE, '--inputs', ZERO], zero);
  refuses('bench --inputs', ['bench', IN, MOE, '--inputs', ZERO, '--reps', '1'], zero);
  refuses('run --inputs', ['run', MOE, '--inputs', ZERO], zero);
});

test('inputs that do not fit the model (type, shape, samples that disagree): eval, bench and run say which, before running', async () => {
  const io = await readTensorSet(CALIB);
  const x = io.x_BLCv_wo_first_l;
  const sets: [string, Record<string, Tensor>, RegExp, RegExp][] = [
    ['int32 labels', { label_B: new Tensor('int32', Int32Array.from([1, 2]), [2]), x_BLCv_wo_first_l: x }, /'label_B' is int32, the model expects int64/, /'label_B' is int32, the model expects int64/],
    ['a short sequence', { label_B: io.label_B, x_BLCv_wo_first_l: new Tensor('float32', (x.data as Float32Array).slice(0, 2 * 100 * 32), [2, 100, 32]) }, /'x_BLCv_wo_first_l' has shape \[2, 100, 32\], the model expects \[B, 679, 32\]/, /'x_BLCv_wo_first_l' has shape \[2, 100, 32\]/],
    ['3 labels for 2 sequences', { label_B: new Tensor('int64', BigInt64Array.from([1n, 2n, 3n]), [3]), x_BLCv_wo_first_l: x }, /'x_BLCv_wo_first_l' has 2 samples, other inputs have 3/, /'x_BLCv_wo_first_l' has 2 along 'B', 'label_B' has 3/],
  ];
  for (const [what, set, expect, expectRun] of sets) {
    const f = path.join(W, 'unfit.npz');
    await writeTensorSet(f, set);
    refuses(`eval: ${what}`, ['eval', IN, MOE, '--inputs', f], expect);
    refuses(`bench: ${what}`, ['bench', IN, MOE, '--inputs', f, '--reps', '1'], expect);
    refuses(`run: ${what}`, ['run', IN, '--inputs', f], expectRun);
    fs.rmSync(f);
  }
});

test('damaged archives and tensor folders are refused, never read as data', async () => {
  const good = await readTensorSet(CALIB);
  const npz = path.join(W, 'good.npz');
  await writeTensorSet(npz, good);
  const bytes = fs.readFileSync(npz);
  // One bit of x's data flipped: the archive still unzips (stored entries), only the CRC-32 tells.
  const flipped = Buffer.from(bytes);
  flipped[bytes.length - 5000] ^= 1;
  put('crc.npz', flipped);
  put('cut.npz', bytes.subarray(0, Math.floor(bytes.length / 2)));
  put('junk.npz', Buffer.concat([Buffer.from('PK'), junk(300)]));
  fs.rmSync(npz);
  refuses('run: a flipped bit', ['run', IN, '--inputs', 'crc.npz'], /crc\.npz: damaged \.npz: 'x_BLCv_wo_first_l\.npy' fails its CRC-32 check/);
  refuses('convert: a flipped bit', [IN, '--experts', '4', '--from-scale', '8', '--calib', 'crc.npz', '-o', path.join(W, 'c.onnx')], /crc\.npz: damaged \.npz: 'x_BLCv_wo_first_l\.npy' fails its CRC-32 check/);
  refuses('eval: a flipped bit', ['eval', IN, MOE, '--inputs', 'crc.npz'], /fails its CRC-32 check/);
  refuses('run: the first half of an .npz', ['run', IN, '--inputs', 'cut.npz'], /cut\.npz: (cannot unzip \.npz|damaged \.npz)/);
  refuses('run: junk after PK', ['run', IN, '--inputs', 'junk.npz'], /junk\.npz: (cannot unzip \.npz|damaged \.npz)/);
  // A tensor folder whose .bin is short, and one whose manifest is not JSON.
  const short = path.join(W, 'short');
  fs.cpSync(CALIB, short, { recursive: true });
  const manifest = JSON.parse(fs.readFileSync(path.join(short, 'manifest.json'), 'utf8'));
  const xbin = path.join(short, manifest.x_BLCv_wo_first_l.file);
  fs.truncateSync(xbin, fs.statSync(xbin).size - 4);
  refuses('run: a short .bin', ['run', IN, '--inputs', short], /short.*x_BLCv_wo_first_l.*bytes but dtype float32 shape \[2, 679, 32\] needs/);
  fs.writeFileSync(path.join(short, 'manifest.json'), '{"label_B": ');
  refuses('run: a manifest cut short', ['run', IN, '--inputs', short], /manifest\.json: invalid JSON/);
  for (const f of ['crc.npz', 'cut.npz', 'junk.npz']) fs.rmSync(path.join(W, f));
  rmDir(short);
});

test('options out of range, without their value, or a switch given one: the flag named, before any work', () => {
  const conv = [IN, '--experts', '4', '--from-scale', '8', '-o', path.join(W, 'o.onnx')];
  refuses('bare --seed', [...conv, '--seed'], /^moefy: --seed needs a value$/);
  refuses('bare --seed before another flag', [IN, '--experts', '4', '--seed', '--from-scale', '8'], /^moefy: --seed needs a value$/);
  refuses('bare --activation', [...conv, '--activation'], /^moefy: --activation needs a value$/);
  refuses('bare -o', [IN, '--experts', '4', '--from-scale', '8', '-o'], /^moefy: -o needs a value$/);
  refuses('--json=maybe', [...conv, '--json=maybe'], /^moefy: --json is a switch: give --json or --no-json \(got --json=maybe\)$/);
  refuses('--external-data=no', [...conv, '--external-data=no'], /--external-data is a switch: give --external-data or --no-external-data \(got --external-data=no\)/);
  refuses('--max-tokens 1', [...conv, '--max-tokens', '1'], /^moefy: --max-tokens must be a whole number ≥ 2: router training holds some of the tokens out to measure its fit \(got 1\)$/);
  const cores = os.availableParallelism();
  refuses('run --threads past the cores', ['run', MOE, '--inputs', CALIB, '--threads', String(cores + 1)], new RegExp(`^moefy: --threads ${cores + 1} is more than this machine's ${cores} cores$`));
  refuses('run --threads 2000', ['run', MOE, '--inputs', CALIB, '--threads', '2000'], /--threads 2000 is more than this machine's/);
  refuses('bench --threads past the cores', ['bench', IN, MOE, '--threads', String(cores + 1)], /--threads \d+ is more than this machine's/);
  refuses('run --scale-index 10 on a 10-scale model', ['run', MOE, '--inputs', CALIB, '--scale-index', '10'], /^moefy: --scale-index 10 is out of range: the patch layout has 10 scales, numbered 0…9 here$/);
  refuses('run --experts 3 on a 4-expert model', ['run', MOE, '--inputs', CALIB, '--experts', '3'], /^moefy: --experts 3: the model's DynamicMoE nodes have 4 experts \(leave --experts out\)$/);
  refuses('eval sweep --grid 0,2', ['eval', 'sweep', IN, MOE, '--inputs', CALIB, '--grid', '0,2', '--out', path.join(W, 'sw')], /^moefy: --grid values must lie in \[0, 1\] \(got 2\)$/);
  refuses('eval --threshold -1', ['eval', IN, MOE, '--inputs', CALIB, '--threshold', '-1'], /^moefy: --threshold values must lie in \[0, 1\] \(got -1\)$/);
  refuses('eval --map-scales 8,11: refused before the evaluation, no folder made', ['eval', IN, MOE, '--inputs', CALIB, '--router-maps', path.join(W, 'maps'), '--map-scales', '8,11'], /^moefy: --map-scales: 11 is not a scale of the model \(scales 1…10\)$/);
  refuses('eval --sample past the inputs', ['eval', IN, MOE, '--inputs', CALIB, '--router-maps', path.join(W, 'maps'), '--sample', '2'], /^moefy: --sample 2 is past the inputs \(2 samples, numbered from 0\)$/);
});

test('a misspelled command is said as such, not as a model to convert', () => {
  refuses('inspekt', ['inspekt', IN], /^moefy: 'inspekt' is neither a command \(did you mean 'inspect'\?\) nor a file$/);
  refuses('covnert', ['covnert', IN, '--experts', '4', '--from-scale', '8'], /'covnert' is neither a command \(did you mean 'convert'\?\) nor a file/);
  refuses('a word far from every command', ['frobnicate'], /'frobnicate' is neither a command \(convert, inspect, run, eval, bench, lib-path\) nor a file/);
  refuses('eval swep', ['eval', 'swep', IN, MOE, '--inputs', CALIB], /^moefy: 'swep' is neither an 'eval' form \(did you mean 'sweep'\?\) nor a file$/);
});

test('auxiliary models that are damaged, foreign or in the wrong place: one line, before any work', () => {
  const rand = put('rand.onnx', junk(1000));
  const empty = put('empty.onnx', '');
  const json = put('cfg.onnx', '{"model": "var", "depth": 2}\n');
  const step = fixture('var_tiny_step.onnx');
  const conv = (prefix: string) => [step, '--experts', '4', '--from-scale', '8', '--calib', CALIB, '--kv-prefix', prefix, '-o', path.join(W, 's.onnx')];
  refuses('--kv-prefix random bytes', conv(rand), /^moefy: --kv-prefix .*rand\.onnx: not an ONNX model \(protobuf decoding failed/);
  refuses('--kv-prefix empty', conv(empty), /^moefy: --kv-prefix .*empty\.onnx: empty file \(0 bytes\), not an ONNX model$/);
  refuses('--kv-prefix JSON', conv(json), /^moefy: --kv-prefix .*cfg\.onnx: this is a JSON file, not an ONNX model$/);
  refuses('--kv-prefix not a VAR', conv(path.join(GELU_STEPS, 'vqvae_decoder.onnx')), /^moefy: --kv-prefix .*vqvae_decoder\.onnx: not a VAR/);
  refuses('--kv-prefix a full-sequence graph', conv(IN), /^moefy: --kv-prefix .*in\.onnx: a full-sequence graph; the KV cache comes from step graphs/);
  refuses('--kv-prefix the last scale first', conv(fixture('var_tiny_step_last_static.onnx')), /^moefy: --kv-prefix .*var_tiny_step_last_static\.onnx computes scale 10 but is number 1 in the list/);
  refuses('--kv-prefix another network', conv(path.join(GELU_STEPS, 'var_step_s0.onnx')), /^moefy: --kv-prefix .*var_step_s0\.onnx is not a graph of the model being converted: blocks 4 against 2$/);
  // The control: the right chain converts, also into a graph exported with a static batch of 1 (the chain ran it in
  // batches of 4: ONNX Runtime's 'invalid dimensions for input label_B', exit 2).
  const chain = [fixture('var_tiny_step0.onnx'), ...Array(8).fill(step)].join(',');
  const out = path.join(fresh('bad-chain'), 's.onnx');
  const ok = moefy([fixture('var_tiny_step_last_static.onnx'), '--experts', '4', '--from-scale', '8', '--calib', CALIB, '--kv-prefix', chain, '--router-epochs', '2', '-o', out, '-q']);
  assert.equal(ok.status, 0, ok.stderr);
  assert.ok(fs.existsSync(out));
  // --samples 100000 would run for hours: the decoder is refused before the generation.
  const gen = (extra: string[]) => ['eval', 'generate', '--steps', GELU_STEPS, '--vq', GELU_STEPS, '--samples', '100000', ...extra];
  refuses('--decoder random bytes', gen(['--decoder', rand, '--images', path.join(W, 'g.png')]), /^moefy: --decoder .*rand\.onnx: not an ONNX model/);
  refuses('--decoder a step graph', gen(['--decoder', path.join(GELU_STEPS, 'var_step_s3.onnx'), '--images', path.join(W, 'g.png')]), /^moefy: --decoder .*var_step_s3\.onnx is not a VQVAE decoder: it takes label_B, x_next_BlCv, cfg, past_key_0/);
  refuses('--decoder the next-scale graph', gen(['--decoder', path.join(GELU_STEPS, 'vq_nextscale_s3.onnx'), '--images', path.join(W, 'g.png')]), /is not a VQVAE decoder: it takes f_hat, idx_Bl/);
  refuses('--images without --decoder', gen(['--images', path.join(W, 'g.png')]), /^moefy: --images needs --decoder$/);
  refuses('--steps without step graphs', ['eval', 'generate', '--steps', CALIB, '--vq', GELU_STEPS], /^moefy: --steps .*calib: no VAR step graph with a static scale found/);
  const vq = path.join(W, 'vq');
  fs.mkdirSync(vq);
  for (let k = 0; k < 10; k++) fs.copyFileSync(path.join(GELU_STEPS, k === 4 ? 'var_step_s4.onnx' : `vq_nextscale_s${k}.onnx`), path.join(vq, `vq_nextscale_s${k}.onnx`));
  refuses('--vq with a step graph in it', ['eval', 'generate', '--steps', GELU_STEPS, '--vq', vq, '--samples', '100000'], /^moefy: --vq .*vq_nextscale_s4\.onnx is not a tokenizer's next-scale graph: it takes label_B/);
  rmDir(vq);
  refuses('inspect a JSON file', ['inspect', json], /^moefy: .*cfg\.onnx: this is a JSON file, not an ONNX model$/);
  for (const f of [rand, empty, json]) fs.rmSync(f);
});

test('run on short external data, and models that do not belong together: said in moefy\'s words', () => {
  const ext = path.join(W, 'ext', 'm.onnx');
  fs.mkdirSync(path.dirname(ext));
  saveModel(loadModel(MOE), ext, { externalData: true });
  fs.truncateSync(`${ext}.data`, 100_000);
  refuses('run: .data cut short', ['run', ext, '--inputs', CALIB], /^moefy: .*m\.onnx: external data file 'm\.onnx\.data' is too short for initializer '.*' \(needs \d+ bytes, has 100000\)$/);
  refuses('run --no-summary: .data cut short', ['run', ext, '--inputs', CALIB, '--no-summary'], /external data file 'm\.onnx\.data' is too short/);
  rmDir(path.dirname(ext));
  // small-var: 512 codes and 10 classes; the tiny model's conversion: 4096 codes.
  refuses('bench: another network', ['bench', SMALL, MOE, '--reps', '1'], /^moefy: .*moe\.onnx is not a conversion of .*small\.onnx: vocabulary 4096 against 512 in the dense model$/);
  refuses('bench: the models swapped', ['bench', MOE, IN, '--reps', '1'], /^moefy: .*moe\.onnx is a converted model: give the dense model first, then its conversion$/);
  refuses('eval: another network', ['eval', SMALL, MOE, '--inputs', CALIB], /moe\.onnx is not a conversion of .*small\.onnx: vocabulary 4096 against 512/);
});
