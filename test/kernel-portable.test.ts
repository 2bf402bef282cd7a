// The portable build (issue 10): libmoefy_ops.so runs on any x86-64 CPU. AVX-512 instructions (EVEX-encoded) appear
// only in the dispatched AVX-512 unit (moefy::avx512) or in OpenBLAS's own kernels for AVX-512 cores (which OpenBLAS
// dispatches by cpuid); MOEFY_CPU_LEVEL forces a level; every level is deterministic across thread counts.
// (tests/kernel.test.ts checks every level against the TypeScript reference.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Tensor } from 'onnxruntime-common';
import { createSession, libPath } from '../src/runtime';
import { buildDynamicMoeModel, randomArray, rng } from './helpers/test-models';
import { cpuLevels } from './helpers/cpu';
import { repoRoot } from './helpers/fixtures';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { findOpenBlas } = require(path.join(repoRoot, 'scripts', 'build-native.js')) as { findOpenBlas(): { lib: string } };

// Legacy prefixes an EVEX instruction may carry (address size, segment); 0x62 opening an instruction in 64-bit mode
// is EVEX (BOUND does not exist there).
const PREFIXES = new Set([0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x67, 0xf0]);
const AVX512_CORES = /_(SKYLAKEX|COOPERLAKE|SAPPHIRERAPIDS)\.o$/;

/** Functions of a binary holding EVEX-encoded (AVX-512) and VEX-encoded (AVX, AVX2, FMA, F16C) instructions. */
function vectorFunctions(file: string): { evex: Map<string, number>; vex: Map<string, number> } {
  const r = spawnSync('objdump', ['-d', '-C', '--insn-width=16', file], { encoding: 'utf8', maxBuffer: 1 << 30 });
  assert.equal(r.status, 0, `objdump failed: ${r.stderr}`);
  const evex = new Map<string, number>();
  const vex = new Map<string, number>();
  let fn = '';
  for (const line of r.stdout.split('\n')) {
    const f = /^[0-9a-f]+ <(.*)>:$/.exec(line);
    if (f) {
      // Demangled function templates carry their return type first ("void moefy::avx512::…ukernel<12>(…)").
      fn = f[1].replace(/^[^(]*?\s(?=moefy::)/, '');
      continue;
    }
    const m = /^\s+[0-9a-f]+:\t([0-9a-f]{2}(?: [0-9a-f]{2})*)/.exec(line);
    if (!m || !fn) continue;
    const bytes = m[1].split(' ');
    let i = 0;
    while (i < bytes.length && PREFIXES.has(parseInt(bytes[i], 16))) i++;
    if (bytes[i] === '62') evex.set(fn, (evex.get(fn) ?? 0) + 1);
    else if (bytes[i] === 'c4' || bytes[i] === 'c5') vex.set(fn, (vex.get(fn) ?? 0) + 1);
  }
  return { evex, vex };
}

test('AVX-512 instructions only in the dispatched AVX-512 functions, AVX only in dispatched functions (objdump -d)', { timeout: 600_000 }, () => {
  const { evex, vex } = vectorFunctions(libPath());
  const ours = [...evex.keys()].filter((f) => f.startsWith('moefy::avx512::'));
  assert.ok(ours.length > 0, 'the AVX-512 unit holds no AVX-512 code (the scan would prove nothing)');
  const others = [...evex.keys()].filter((f) => !f.startsWith('moefy::avx512::'));
  assert.ok(!others.some((f) => f.startsWith('moefy::')), `moefy functions outside moefy::avx512 hold AVX-512 code: ${others.filter((f) => f.startsWith('moefy::')).join(', ')}`);
  // The rest must be OpenBLAS functions defined in its objects for AVX-512 cores (nm of the linked archive).
  const nm = spawnSync('nm', ['-A', '--defined-only', findOpenBlas().lib], { encoding: 'utf8', maxBuffer: 1 << 30 });
  assert.equal(nm.status, 0, nm.stderr);
  const avx512Blas = new Set<string>();
  const coreBlas = new Set<string>(); // defined in an object OpenBLAS built for one CPU core (name_CORE.o)
  for (const line of nm.stdout.split('\n')) {
    const m = /^[^:]+:([^:]+):\S*\s+[tT]\s+(\S+)$/.exec(line);
    if (!m) continue;
    if (AVX512_CORES.test(m[1])) avx512Blas.add(m[2]);
    if (/_[A-Z][A-Z0-9]+\.o$/.test(m[1])) coreBlas.add(m[2]);
  }
  const bad = others.filter((f) => !avx512Blas.has(f));
  assert.deepEqual(bad, [], `AVX-512 code outside the dispatched functions: ${bad.slice(0, 20).join(', ')}`);
  // The baseline code holds no AVX either (the library runs on x86-64 CPUs without AVX).
  const badVex = [...vex.keys()].filter((f) => !/^moefy::avx(2|512)::/.test(f) && !coreBlas.has(f));
  assert.deepEqual(badVex, [], `AVX code outside the dispatched functions: ${badVex.slice(0, 20).join(', ')}`);
  assert.ok([...vex.keys()].some((f) => f.startsWith('moefy::avx2::')), 'the AVX2 unit holds no AVX2 code');
});

test('MOEFY_CPU_LEVEL picks the level (kernel trace), an unknown value is an error', () => {
  const script = `
    const { createSession } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'runtime'))});
    const { buildDynamicMoeModel, randomArray, rng } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'test', 'helpers', 'test-models'))});
    const r = rng(3);
    createSession(buildDynamicMoeModel({ D: 8, E: 2, S: 4, patchNums: [1, 2], weights: { W1: randomArray(r, 64), B1: randomArray(r, 8), W2: randomArray(r, 64) } }))
      .then(() => console.log('created'), (e) => console.log('error: ' + e.message));`;
  for (const level of cpuLevels()) {
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, MOEFY_CPU_LEVEL: level, MOEFY_KERNEL_TRACE: '1' } });
    assert.match(r.stdout, /created/, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`level ${level},`), r.stderr);
  }
  const bad = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, MOEFY_CPU_LEVEL: 'sse9' } });
  assert.match(bad.stdout, /error: .*MOEFY_CPU_LEVEL=sse9 is not one of plain, avx2, avx512/, bad.stdout + bad.stderr);
});

test('every level gives bitwise the same result at 1 and 3 threads (fixed expert groups)', async () => {
  const r = rng(11);
  const D = 48, E = 8, S = 20, L = 300;
  const w = { W1: randomArray(r, D * E * S, 0.2), B1: randomArray(r, E * S, 0.1), W2: randomArray(r, E * S * D, 0.2), B2: randomArray(r, D, 0.1) };
  const X = new Tensor('float32', randomArray(r, 2 * L * D), [2, L, D]);
  const norms = new Tensor('float32', Float32Array.from(randomArray(r, 2 * L * E), Math.abs), [2, L, E]);
  const model = buildDynamicMoeModel({ D, E, S, patchNums: [10, 10, 10], threshold: [0.4, 0.6, 0.3], weights: w });
  for (const level of cpuLevels()) {
    process.env.MOEFY_CPU_LEVEL = level;
    try {
      const outs: Float32Array[] = [];
      for (const threads of [1, 3]) {
        const s = await createSession(model, { intraOpNumThreads: threads });
        outs.push((await s.run({ X, norms })).Y.data as Float32Array);
        s.release();
      }
      assert.ok(Buffer.from(outs[0].buffer).equals(Buffer.from(outs[1].buffer)), `${level}: 1 and 3 threads differ`);
    } finally {
      delete process.env.MOEFY_CPU_LEVEL;
    }
  }
});
