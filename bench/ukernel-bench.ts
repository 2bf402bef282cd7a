/**
 * The packed micro-kernels alone (kernels/bench/ukernel_bench.cc) at the shapes of one DynamicMoE call, per CPU
 * level: GFLOP/s per core on one core and on every thread at once, weights streamed from memory. Against the core's
 * FMA limit (AVX-512: 64 FLOP per cycle, AVX2: 32) it shows what the kernel leaves on the table apart from routing,
 * threads and ONNX Runtime. Builds the program on first use (a CMake target outside the default build).
 *
 *   node dist/bench/ukernel-bench.js [--threads 2] [--reps 20] [--mb 64]
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { packageRoot } from '../src/files/package-root';

const build = path.join(packageRoot(), 'kernels', 'build');
if (!fs.existsSync(path.join(build, 'CMakeCache.txt'))) {
  console.error('kernels/build is not configured: run npm run build first');
  process.exit(1);
}
execFileSync('cmake', ['--build', build, '--target', 'moefy_ukernel_bench'], { stdio: ['ignore', 'ignore', 'inherit'] });
execFileSync(path.join(build, 'moefy_ukernel_bench'), process.argv.slice(2), { stdio: 'inherit' });
