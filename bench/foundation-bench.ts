// Foundation benchmark (issue 2): reading, understanding and writing VAR exports at real sizes.
//
//   1. Generate a VAR-d16-sized model (16 blocks, C 1024, H 4096, V 4096: ≈ 1.2 GB fp32) and save it as one file.
//   2. In a child process, `inspect` it (load + analyseVar + FLOPs) and measure the child's peak RSS: it must stay
//      under 1.5 × the file size (the loader keeps weights as views into the file buffer, never copies).
//   3. Generate a model over protobuf's 2 GB limit (d16 width, depth 30: ≈ 2.3 GB), save it with external data,
//      reload it in a child process and check that it decodes (weights byte-identical) and is recognised.
//
// Run: node --expose-gc dist/bench/foundation-bench.js [--keep] (or `npm run bench foundation`). Files go to a temporary
// folder under os.tmpdir() and are deleted at the end. Exit status 1 if a check fails.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { generateVarD16Like } from '../fixtures/generate';
import { loadModel, saveModel, PROTOBUF_LIMIT } from '../src/onnx/io';
import { inspectModel } from '../src/inspect';
import { Model } from '../src/ir/model';

const GB = 1e9;
const MiB = 2 ** 20;
const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const gb = (b: number) => `${(b / GB).toFixed(3)} GB`;
const gc = () => (globalThis as { gc?: () => void }).gc?.();

interface ChildResult {
  loadMs: number;
  analyseMs: number;
  maxRssBytes: number;
  blocks: number;
  D: number;
  H: number;
  vocab: number | null;
  kind: string;
  activations: string[];
  parameters: number;
  externalData: boolean;
  flopsTotal: number;
  hashes: Record<string, string>;
}

/**
 * VAR's parameter count (research doc §1.1, V 4096, 1000 classes, 16-wide heads of 64):
 * depth·(18C² + 14C + heads) + 2C² + 5823C + 4096. The ONNX export also stores the zero k-bias (C per block).
 */
const varParams = (depth: number, C: number) => depth * (18 * C * C + 14 * C + C / 64) + 2 * C * C + 5823 * C + 4096;

const sha = (b: Uint8Array) => crypto.createHash('sha256').update(b).digest('hex').slice(0, 16);

/** Child mode: load + inspect one model and report timings and peak RSS as JSON on stdout. */
function child(file: string, hashNames: string[]): void {
  const t0 = performance.now();
  const model = loadModel(file);
  const t1 = performance.now();
  const r = inspectModel(model, file);
  const t2 = performance.now();
  const hashes: Record<string, string> = {};
  for (const n of hashNames) hashes[n] = sha(model.graph.value(n).tensor!.bytes());
  const out: ChildResult = {
    loadMs: t1 - t0,
    analyseMs: t2 - t1,
    // resourceUsage().maxRSS is in kilobytes (KiB on Linux).
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
    blocks: r.blocks.length,
    D: r.D,
    H: r.H,
    vocab: r.vocab,
    kind: r.graph.kind,
    activations: [...new Set(r.blocks.map((b) => b.activation))],
    parameters: r.parameters,
    externalData: r.externalData,
    flopsTotal: r.flops.total,
    hashes,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
}

function runChild(file: string, hashNames: string[]): ChildResult {
  const r = spawnSync(process.execPath, [__filename, '--child', file, ...hashNames], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`child inspect of ${file} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ChildResult;
}

/** Hashes of a few tensors of the in-memory model (the largest and the last), to check what the reader gets back. */
function sampleHashes(m: Model): Record<string, string> {
  const inits = m.graph.initializers;
  const largest = inits.reduce((a, v) => (v.tensor!.byteLength > a.tensor!.byteLength ? v : a));
  const picks = [...new Set([largest, inits[inits.length - 1], inits[Math.floor(inits.length / 2)]])];
  return Object.fromEntries(picks.map((v) => [v.name, sha(v.tensor!.bytes())]));
}

const checks: { what: string; ok: boolean; detail: string }[] = [];
function check(what: string, ok: boolean, detail: string): void {
  checks.push({ what, ok, detail });
  console.log(`  [${ok ? 'ok' : 'FAIL'}] ${what}: ${detail}`);
}

function dirBytes(files: string[]): number {
  return files.reduce((a, f) => a + (fs.existsSync(f) ? fs.statSync(f).size : 0), 0);
}

function main(): void {
  const keep = process.argv.includes('--keep');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-foundation-bench-'));
  console.log(`foundation bench: ${os.cpus().length} CPUs, ${(os.totalmem() / GB).toFixed(1)} GB RAM, node ${process.version}, temp ${dir}`);
  try {
    // 1. VAR-d16-sized, one file.
    console.log('\n1. VAR-d16-sized model (16 blocks, D 1024, H 4096, V 4096), single file');
    let t = performance.now();
    let m: Model | null = generateVarD16Like({ seed: 1 });
    const genMs = performance.now() - t;
    const d16Hashes = sampleHashes(m);
    const d16 = path.join(dir, 'var_d16_like.onnx');
    t = performance.now();
    saveModel(m, d16, { externalData: false });
    const saveMs = performance.now() - t;
    m = null;
    gc();
    const size = fs.statSync(d16).size;
    console.log(`  generate ${sec(genMs)}, save ${sec(saveMs)}, file ${gb(size)} (${(size / MiB).toFixed(0)} MiB)`);
    const c1 = runChild(d16, Object.keys(d16Hashes));
    console.log(`  child inspect: load ${sec(c1.loadMs)}, analyse + FLOPs ${sec(c1.analyseMs)}, peak RSS ${gb(c1.maxRssBytes)} = ${(c1.maxRssBytes / size).toFixed(3)} × file`);
    check('peak RSS of inspect < 1.5 × file size', c1.maxRssBytes < 1.5 * size, `${gb(c1.maxRssBytes)} vs limit ${gb(1.5 * size)}`);
    check('recognised as VAR-d16', c1.blocks === 16 && c1.D === 1024 && c1.H === 4096 && c1.kind === 'full' && c1.vocab === 4096, `${c1.blocks} blocks, D ${c1.D}, H ${c1.H}, V ${c1.vocab}, ${c1.kind}, ${c1.activations.join('/')}, ${(c1.parameters / 1e6).toFixed(1)} M parameters, ${(c1.flopsTotal / 1e9).toFixed(1)} GFLOPs/sample`);
    check('parameters = VAR-d16 (310,283,520) within 0.1%', Math.abs(c1.parameters / varParams(16, 1024) - 1) < 1e-3, `${c1.parameters} vs ${varParams(16, 1024)}`);
    check('weights read back unchanged', JSON.stringify(c1.hashes) === JSON.stringify(d16Hashes), `${Object.keys(d16Hashes).length} tensors compared by SHA-256`);
    // Re-save in this process: load → save unchanged is byte-identical at this size too.
    t = performance.now();
    const again = path.join(dir, 'var_d16_like_again.onnx');
    saveModel(loadModel(d16), again, { externalData: false });
    const resaveMs = performance.now() - t;
    gc();
    const identical = filesEqual(d16, again);
    check('load + save unchanged is byte-identical', identical, `${sec(resaveMs)}`);
    fs.rmSync(again);
    fs.rmSync(d16);

    // 2. Over 2 GB: external data.
    console.log('\n2. Model over 2 GB (d16 width, depth 30), external data');
    t = performance.now();
    let big: Model | null = generateVarD16Like({ seed: 2, depth: 30 });
    const genBigMs = performance.now() - t;
    const bigBytes = big.graph.initializers.reduce((a, v) => a + v.tensor!.byteLength, 0);
    const bigHashes = sampleHashes(big);
    const bigFile = path.join(dir, 'var_d30w1024.onnx');
    t = performance.now();
    const saved = saveModel(big, bigFile, { externalData: 'auto' });
    const saveBigMs = performance.now() - t;
    big = null;
    gc();
    const files = [bigFile, saved.externalData ?? ''];
    const total = dirBytes(files);
    console.log(`  generate ${sec(genBigMs)}, save ${sec(saveBigMs)}: weights ${gb(bigBytes)}, model file ${(fs.statSync(bigFile).size / 1024).toFixed(0)} KiB + data ${gb(total - fs.statSync(bigFile).size)}`);
    check('over the 2 GB protobuf limit', bigBytes > PROTOBUF_LIMIT, `${gb(bigBytes)} > ${gb(PROTOBUF_LIMIT)}`);
    check("saveModel 'auto' chose external data", saved.externalData !== null && fs.existsSync(saved.externalData), String(saved.externalData && path.basename(saved.externalData)));
    const c2 = runChild(bigFile, Object.keys(bigHashes));
    console.log(`  child reload + inspect: load ${sec(c2.loadMs)}, analyse + FLOPs ${sec(c2.analyseMs)}, peak RSS ${gb(c2.maxRssBytes)} (weights stay on disk)`);
    check('reloaded and recognised', c2.blocks === 30 && c2.D === 1024 && c2.H === 4096 && c2.externalData, `${c2.blocks} blocks, D ${c2.D}, H ${c2.H}, external data ${c2.externalData}, ${(c2.parameters / 1e6).toFixed(1)} M parameters`);
    check('parameters = closed form for depth 30, C 1024 within 0.1%', Math.abs(c2.parameters / varParams(30, 1024) - 1) < 1e-3, `${c2.parameters} vs ${varParams(30, 1024)}`);
    check('external weights read back unchanged', JSON.stringify(c2.hashes) === JSON.stringify(bigHashes), `${Object.keys(bigHashes).length} tensors compared by SHA-256`);
  } finally {
    if (keep) console.log(`\n(kept ${dir})`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  const failed = checks.filter((c) => !c.ok);
  console.log(`\nfoundation bench: ${checks.length - failed.length}/${checks.length} checks passed`);
  if (failed.length) process.exitCode = 1;
}

function filesEqual(a: string, b: string): boolean {
  const sa = fs.statSync(a).size;
  if (sa !== fs.statSync(b).size) return false;
  const fa = fs.openSync(a, 'r'), fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.alloc(64 * MiB), bb = Buffer.alloc(64 * MiB);
    for (let off = 0; off < sa; off += ba.length) {
      const n = fs.readSync(fa, ba, 0, ba.length, off);
      fs.readSync(fb, bb, 0, n, off);
      if (ba.compare(bb, 0, n, 0, n) !== 0) return false;
    }
    return true;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

if (process.argv[2] === '--child') child(process.argv[3], process.argv.slice(4));
else main();
