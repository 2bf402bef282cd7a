// Float64 dense linear algebra for calibration (the expert repair's ridge least squares), in the native addon
// src/calib/native (OpenBLAS/LAPACK, one thread): a JavaScript Cholesky of VAR-d16's 4097² systems took minutes per
// solve, LAPACK takes about a second.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoefyError } from '../errors';
import { packageRoot } from '../files/package-root';

interface LinalgAddon {
  gramAdd(G: Float64Array, A: Float32Array, n: number, h: number, ld: number): void;
  solveSpd(A: Float64Array, B: Float64Array, n: number, k: number): number;
  quadForm(G: Float64Array, W: Float64Array, n: number, k: number): number;
}

let addon: LinalgAddon | null = null;

function load(): LinalgAddon {
  if (addon) return addon;
  const p = path.join(packageRoot(), 'src', 'calib', 'native', 'build', 'Release', 'moefy_linalg.node');
  if (!fs.existsSync(p)) throw new MoefyError(`moefy's solver addon is not built (${p} missing): run npm run build`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  addon = require(p) as LinalgAddon;
  return addon;
}

/**
 * Solves A·X = B for symmetric positive definite A [n, n] (overwritten by its Cholesky factor) and B [n, k] row-major
 * (overwritten by X). `what` names the system in the error when A is not positive definite.
 */
export function solveSpd(A: Float64Array, B: Float64Array, n: number, k: number, what: string): void {
  const info = load().solveSpd(A, B, n, k);
  if (info !== 0) throw new MoefyError(`${what}: the least-squares system is not positive definite (pivot ${info})`);
}

/** tr(Wᵀ·G·W) for symmetric G [n, n] and W [n, k] row-major. */
export function quadForm(G: Float64Array, W: Float64Array, n: number, k: number): number {
  return load().quadForm(G, W, n, k);
}

/**
 * G[i·ld + j] += (AᵀA)[i, j] for i ≤ j < h: the upper triangle of a row-major float64 Gram matrix (what solveSpd and
 * quadForm read), from A [n, h] row-major float32 (computed in float32, as one chunk, then added in float64).
 */
export function gramAdd(G: Float64Array, A: Float32Array, n: number, h: number, ld: number): void {
  load().gramAdd(G, A, n, h, ld);
}
