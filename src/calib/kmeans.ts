// Balanced k-means (every cluster gets exactly n/k points) and the neuron → expert split built on it.
//
// Lloyd iterations with seeded k-means++ initialisation. The assignment step is solved exactly as a
// min-cost transportation problem (capacities n/k) by successive shortest paths on the k-node cluster graph:
// points are inserted one at a time; a new point p goes to a cluster b0, and a chain of moves b0→b1→…→t ends in a
// cluster t that still has room. The edge a→b costs min over points q in a of cost(q,b) − cost(q,a), kept in one
// lazy min-heap per cluster pair. Each insertion takes a shortest path (Bellman–Ford on k nodes; no negative cycles
// because the partial assignment is optimal), which keeps the partial assignment optimal (the Hungarian
// argument), so the final one is optimal. When p's cheapest cluster still has room that is the shortest path
// (a cheaper chain would be a negative cycle in the optimal partial assignment), and no search is needed.
// The n×k distance matrix (the heavy part) is one Gemm in onnxruntime-node per iteration.
import * as ort from 'onnxruntime-node';
import { MoefyError } from '../errors';
import { DataType } from '../onnx/schema';
import { GraphBuilder, f32 } from './ort-graph';
import { deriveSeed, permutation, rng } from './random';

export interface KMeansOptions {
  seed: number;
  /** Lloyd iterations per run (default 50). */
  maxIter?: number;
  /** Independent k-means++ starts; the lowest inertia wins (default 1). */
  nInit?: number;
  /** Stop when the relative inertia decrease falls below tol (default 1e-6), or when no label changes. */
  tol?: number;
  /** ORT intra-op threads of the distance session (default: ORT's). */
  threads?: number;
}

export interface KMeansResult {
  /** Cluster of each point, [n]. */
  labels: Int32Array;
  /** [k, dim] row-major. */
  centroids: Float32Array;
  /** Σ squared distance of each point to its centroid. */
  inertia: number;
  /** Lloyd iterations of the winning run. */
  iterations: number;
}

/** Expert layout of one FFN: new position j holds old neuron order[j]; expert e owns positions e·expertSize… */
export interface ExpertLayout {
  experts: number;
  expertSize: number;
  /** Permutation, new position → old neuron; experts contiguous, ascending original order inside an expert. */
  order: Int32Array;
  /** Expert of each (old) neuron. */
  labels: Int32Array;
}

export interface Concentration {
  /** Per expert: its share of the total activation mass Σ|h| over the tokens used. Sums to 1. */
  massShare: Float64Array;
  /** Mean over tokens of (fewest experts holding ≥ 90% of the token's activation mass) / E. Lower = more concentrated. */
  expertsFor90: number;
  /** Tokens the statistics were computed on. */
  tokens: number;
}

export interface ClusterNeuronsOptions {
  by: 'weights' | 'activations';
  /** Hidden activations [N, H] on calibration tokens: required for 'activations', optional (for `concentration`) otherwise. */
  activations?: Float32Array;
  N?: number;
  seed: number;
  /** Feature of a neuron when clustering by activations: L2-normalised activations (default) or binarised (h > 0). */
  activationFeature?: 'normalized' | 'binary';
  /** At most this many tokens are used (seeded subsample; default 4096). */
  maxTokens?: number;
  maxIter?: number;
  nInit?: number;
  /** ORT intra-op threads (default: ORT's). */
  threads?: number;
}

export interface ClusterNeuronsResult extends ExpertLayout {
  kmeans: KMeansResult;
  /** Present when activations were given. */
  concentration?: Concentration;
}

// ------------------------------------------------------------------------------------------------------------------
// Exact balanced assignment.

/** A binary min-heap of (value, id) pairs in typed arrays (grown by doubling, reusable after clear()). */
class MinHeap {
  vals: Float64Array;
  ids: Int32Array;
  size = 0;
  constructor(capacity: number) {
    this.vals = new Float64Array(Math.max(4, capacity));
    this.ids = new Int32Array(Math.max(4, capacity));
  }
  clear(): void {
    this.size = 0;
  }
  push(v: number, id: number): void {
    if (this.size === this.vals.length) {
      const nv = new Float64Array(this.size * 2), ni = new Int32Array(this.size * 2);
      nv.set(this.vals);
      ni.set(this.ids);
      this.vals = nv;
      this.ids = ni;
    }
    const vals = this.vals, ids = this.ids;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (vals[p] < v || (vals[p] === v && ids[p] <= id)) break;
      vals[i] = vals[p];
      ids[i] = ids[p];
      i = p;
    }
    vals[i] = v;
    ids[i] = id;
  }
  pop(): void {
    const vals = this.vals, ids = this.ids;
    const n = --this.size;
    if (n === 0) return;
    const lv = vals[n], li = ids[n];
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      let m = l;
      const r = l + 1;
      if (r < n && (vals[r] < vals[l] || (vals[r] === vals[l] && ids[r] < ids[l]))) m = r;
      if (vals[m] > lv || (vals[m] === lv && ids[m] >= li)) break;
      vals[i] = vals[m];
      ids[i] = ids[m];
      i = m;
    }
    vals[i] = lv;
    ids[i] = li;
  }
}

/** Reusable heaps for balancedAssign (same n, k across Lloyd iterations). */
export class AssignWorkspace {
  readonly heaps: MinHeap[];
  constructor(readonly n: number, readonly k: number) {
    this.heaps = Array.from({ length: k * k }, () => new MinHeap(2 * Math.ceil(n / k)));
  }
}

/**
 * Optimal assignment of n points to k clusters with exactly cap = n/k points each, minimising Σ cost[p·k + label[p]].
 * `cost` is [n, k] row-major. Deterministic.
 */
export function balancedAssign(cost: Float64Array | Float32Array, n: number, k: number, ws?: AssignWorkspace): Int32Array {
  if (n % k !== 0) throw new MoefyError(`balanced assignment: ${k} clusters do not divide ${n} points`);
  const cap = n / k;
  const labels = new Int32Array(n).fill(-1);
  const count = new Int32Array(k);
  if (k === 1) return labels.fill(0);
  const work = ws && ws.n === n && ws.k === k ? ws : new AssignWorkspace(n, k);
  const heaps = work.heaps;
  for (const h of heaps) h.clear();
  const W = new Float64Array(k * k).fill(Infinity); // valid heap tops
  const Wid = new Int32Array(k * k).fill(-1);
  const dist = new Float64Array(k);
  const pred = new Int32Array(k);

  const refreshTop = (a: number, b: number) => {
    const h = heaps[a * k + b];
    while (h.size > 0 && labels[h.ids[0]] !== a) h.pop();
    if (h.size > 0) {
      W[a * k + b] = h.vals[0];
      Wid[a * k + b] = h.ids[0];
    } else {
      W[a * k + b] = Infinity;
      Wid[a * k + b] = -1;
    }
  };
  const place = (q: number, b: number) => {
    const old = labels[q];
    labels[q] = b;
    count[b]++;
    const base = q * k, cb = cost[base + b];
    for (let c = 0; c < k; c++) {
      if (c === b) continue;
      const v = cost[base + c] - cb;
      heaps[b * k + c].push(v, q);
      const idx = b * k + c;
      if (v < W[idx] || (v === W[idx] && q < Wid[idx])) {
        W[idx] = v;
        Wid[idx] = q;
      }
    }
    if (old >= 0) {
      count[old]--;
      for (let c = 0; c < k; c++) if (c !== old && Wid[old * k + c] === q) refreshTop(old, c);
    }
  };

  for (let p = 0; p < n; p++) {
    const base = p * k;
    let best = 0;
    for (let b = 1; b < k; b++) if (cost[base + b] < cost[base + best]) best = b;
    if (count[best] < cap) {
      place(p, best);
      continue;
    }
    // Shortest paths from p over the cluster graph (Bellman–Ford; k is small).
    for (let b = 0; b < k; b++) {
      dist[b] = cost[base + b];
      pred[b] = -1;
    }
    for (let round = 0; round < k; round++) {
      let changed = false;
      for (let a = 0; a < k; a++) {
        const da = dist[a];
        if (da === Infinity) continue;
        const row = a * k;
        for (let b = 0; b < k; b++) {
          const nd = da + W[row + b];
          if (nd < dist[b] - 1e-12 * Math.abs(nd)) {
            dist[b] = nd;
            pred[b] = a;
            changed = true;
          }
        }
      }
      if (!changed) break;
    }
    let t = -1;
    for (let b = 0; b < k; b++) if (count[b] < cap && (t < 0 || dist[b] < dist[t])) t = b;
    // Walk back t ← … ← b0 and collect the moved points before changing anything.
    const moves: [number, number][] = [];
    let b = t;
    for (let guard = 0; pred[b] >= 0; guard++) {
      if (guard > k) throw new Error('balancedAssign: cycle in the shortest-path tree (numerical trouble)');
      const a = pred[b];
      moves.push([Wid[a * k + b], b]);
      b = a;
    }
    for (const [q, to] of moves) place(q, to);
    place(p, b);
  }
  return labels;
}

// ------------------------------------------------------------------------------------------------------------------
// Distances.

/** Holds the points in an ORT session; returns P·Cᵀ [n, m] for centroid blocks C [m, dim]. */
class DotEngine {
  private constructor(private sess: ort.InferenceSession) {}
  static async create(points: Float32Array, n: number, dim: number, threads?: number): Promise<DotEngine> {
    const b = new GraphBuilder('kmeans_dot');
    const p = b.constF(points, [n, dim], 'P');
    const c = b.input('C', ['m', dim], DataType.FLOAT);
    b.output(b.op('Gemm', [p, c], { transB: 1 }), 'S');
    return new DotEngine(await b.session(threads ? { intraOpNumThreads: threads } : {}));
  }
  async dots(C: Float32Array, m: number, dim: number): Promise<Float32Array> {
    const r = await this.sess.run({ C: f32(C, [m, dim]) });
    return r.S.data as Float32Array;
  }
  async release(): Promise<void> {
    await this.sess.release();
  }
}

async function kmeansOnce(points: Float32Array, n: number, dim: number, k: number, pnorm: Float64Array, engine: DotEngine, seed: number, maxIter: number, tol: number): Promise<KMeansResult> {
  const r = rng(seed);
  // k-means++: first centre uniform, then ∝ D² (every draw from the seeded PRNG).
  const centroids = new Float32Array(k * dim);
  const minD = new Float64Array(n).fill(Infinity);
  let pick = Math.min(n - 1, Math.floor(r() * n));
  for (let c = 0; c < k; c++) {
    centroids.set(points.subarray(pick * dim, pick * dim + dim), c * dim);
    if (c === k - 1) break;
    const dots = await engine.dots(points.subarray(pick * dim, pick * dim + dim), 1, dim);
    const cn = pnorm[pick];
    let total = 0;
    for (let p = 0; p < n; p++) {
      const d = Math.max(0, pnorm[p] - 2 * dots[p] + cn);
      if (d < minD[p]) minD[p] = d;
      total += minD[p];
    }
    if (!(total > 0)) {
      pick = Math.min(n - 1, Math.floor(r() * n)); // all points coincide with centres: any point
      continue;
    }
    let u = r() * total;
    pick = n - 1;
    for (let p = 0; p < n; p++) {
      u -= minD[p];
      if (u < 0) {
        pick = p;
        break;
      }
    }
  }
  const cost = new Float64Array(n * k);
  let labels: Int32Array = new Int32Array(n).fill(-1);
  let inertia = Infinity;
  let iterations = 0;
  const cnorm = new Float64Array(k);
  const ws = new AssignWorkspace(n, k);
  for (let it = 0; it < maxIter; it++) {
    for (let c = 0; c < k; c++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += centroids[c * dim + d] * centroids[c * dim + d];
      cnorm[c] = s;
    }
    const dots = await engine.dots(centroids, k, dim);
    for (let i = 0; i < n * k; i++) cost[i] = cnorm[i % k] - 2 * dots[i];
    const next = balancedAssign(cost, n, k, ws);
    let newInertia = 0;
    for (let p = 0; p < n; p++) newInertia += Math.max(0, pnorm[p] + cost[p * k + next[p]]);
    iterations = it + 1;
    let same = true;
    for (let p = 0; p < n; p++) if (next[p] !== labels[p]) { same = false; break; }
    const prev = inertia;
    labels = next;
    inertia = newInertia;
    if (same) break;
    updateCentroids(points, n, dim, k, labels, centroids);
    if (prev !== Infinity && prev - newInertia <= tol * prev) break;
  }
  // Report the inertia of the returned (labels, centroids) pair exactly.
  updateCentroids(points, n, dim, k, labels, centroids);
  inertia = 0;
  for (let p = 0; p < n; p++) {
    const c = labels[p];
    let s = 0;
    for (let d = 0; d < dim; d++) {
      const v = points[p * dim + d] - centroids[c * dim + d];
      s += v * v;
    }
    inertia += s;
  }
  return { labels, centroids, inertia, iterations };
}

function updateCentroids(points: Float32Array, n: number, dim: number, k: number, labels: Int32Array, centroids: Float32Array): void {
  const sum = new Float64Array(k * dim);
  const cnt = new Int32Array(k);
  for (let p = 0; p < n; p++) {
    const c = labels[p];
    cnt[c]++;
    const o = c * dim, po = p * dim;
    for (let d = 0; d < dim; d++) sum[o + d] += points[po + d];
  }
  for (let c = 0; c < k; c++) if (cnt[c] > 0) for (let d = 0; d < dim; d++) centroids[c * dim + d] = sum[c * dim + d] / cnt[c];
}

/**
 * Balanced k-means: k clusters of exactly n/k points each. points [n, dim] row-major. Async because the distance
 * matrix runs in onnxruntime-node. Deterministic for a given seed.
 */
export async function balancedKMeans(points: Float32Array, n: number, dim: number, k: number, opts: KMeansOptions): Promise<KMeansResult> {
  if (!Number.isInteger(n) || !Number.isInteger(dim) || !Number.isInteger(k) || n <= 0 || dim <= 0 || k <= 0) throw new MoefyError(`balancedKMeans: bad sizes n=${n} dim=${dim} k=${k}`);
  if (n % k !== 0) throw new MoefyError(`balancedKMeans: ${k} clusters do not divide ${n} points (equal-size experts need k | n)`);
  if (points.length !== n * dim) throw new MoefyError(`balancedKMeans: points has ${points.length} values, expected n·dim = ${n * dim}`);
  if (!Number.isFinite(opts?.seed)) throw new MoefyError('balancedKMeans: a numeric seed is required');
  for (let i = 0; i < points.length; i++) if (!Number.isFinite(points[i])) throw new MoefyError(`balancedKMeans: point value ${i} is not finite`);
  const maxIter = opts.maxIter ?? 50, nInit = Math.max(1, opts.nInit ?? 1), tol = opts.tol ?? 1e-6;
  const pnorm = new Float64Array(n);
  for (let p = 0; p < n; p++) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += points[p * dim + d] * points[p * dim + d];
    pnorm[p] = s;
  }
  const engine = await DotEngine.create(points, n, dim, opts.threads);
  try {
    let best: KMeansResult | null = null;
    for (let run = 0; run < nInit; run++) {
      const res = await kmeansOnce(points, n, dim, k, pnorm, engine, deriveSeed(opts.seed, run), maxIter, tol);
      if (!best || res.inertia < best.inertia) best = res;
    }
    return best!;
  } finally {
    await engine.release();
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Neurons → experts.

/** The layout for given labels: experts contiguous, neurons in ascending original order inside an expert. */
export function layoutFromLabels(labels: Int32Array, experts: number): ExpertLayout {
  const H = labels.length;
  if (H % experts !== 0) throw new MoefyError(`${experts} experts do not divide ${H} neurons`);
  const S = H / experts;
  const fill = new Int32Array(experts);
  const order = new Int32Array(H);
  for (let i = 0; i < H; i++) {
    const e = labels[i];
    if (!(e >= 0 && e < experts)) throw new MoefyError(`neuron ${i} has expert ${e}, outside 0..${experts - 1}`);
    if (fill[e] >= S) throw new MoefyError(`expert ${e} has more than ${S} neurons`);
    order[e * S + fill[e]++] = i;
  }
  return { experts, expertSize: S, order, labels: Int32Array.from(labels) };
}

function l2NormalizeRows(a: Float32Array, rows: number, dim: number): void {
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += a[r * dim + d] * a[r * dim + d];
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let d = 0; d < dim; d++) a[r * dim + d] *= inv;
  }
}

function subsampleTokens(N: number, maxTokens: number, seed: number): Int32Array {
  if (N <= maxTokens) return Int32Array.from({ length: N }, (_, i) => i);
  return Int32Array.from(permutation(N, rng(seed)).subarray(0, maxTokens)).sort();
}

/** How concentrated the activations are per expert (see Concentration). tokens: rows of `activations` to use. */
export function activationConcentration(activations: Float32Array, N: number, H: number, labels: Int32Array, E: number, tokens?: Int32Array): Concentration {
  const rows = tokens ?? Int32Array.from({ length: N }, (_, i) => i);
  const massShare = new Float64Array(E);
  const m = new Float64Array(E);
  let frac = 0, counted = 0;
  for (const t of rows) {
    m.fill(0);
    const o = t * H;
    for (let j = 0; j < H; j++) m[labels[j]] += Math.abs(activations[o + j]);
    let tot = 0;
    for (let e = 0; e < E; e++) {
      tot += m[e];
      massShare[e] += m[e];
    }
    if (!(tot > 0)) continue;
    const sorted = Array.from(m).sort((a, b) => b - a);
    let acc = 0, c = 0;
    while (c < E && acc < 0.9 * tot) acc += sorted[c++];
    frac += c / E;
    counted++;
  }
  let all = 0;
  for (let e = 0; e < E; e++) all += massShare[e];
  if (all > 0) for (let e = 0; e < E; e++) massShare[e] /= all;
  return { massShare, expertsFor90: counted ? frac / counted : NaN, tokens: counted };
}

/**
 * Splits an FFN's H hidden neurons into E equal experts. W1 [D,H] row-major (neuron h is column h = row h of
 * fc1.weight). 'weights': balanced k-means of the L2-normalised neuron weight vectors (DMoE-VAR / MoEfication).
 * 'activations': balanced k-means of each neuron's activation vector over ≤ maxTokens calibration tokens.
 */
export async function clusterNeurons(W1: Float32Array, D: number, H: number, E: number, opts: ClusterNeuronsOptions): Promise<ClusterNeuronsResult> {
  if (W1.length !== D * H) throw new MoefyError(`clusterNeurons: W1 has ${W1.length} values, expected D·H = ${D}·${H}`);
  if (!(E > 0) || H % E !== 0) throw new MoefyError(`clusterNeurons: ${E} experts do not divide ${H} neurons`);
  const maxTokens = opts.maxTokens ?? 4096;
  let tokens: Int32Array | undefined;
  let N = 0;
  if (opts.activations) {
    N = opts.N ?? opts.activations.length / H;
    if (!Number.isInteger(N) || opts.activations.length !== N * H) throw new MoefyError(`clusterNeurons: activations have ${opts.activations.length} values, expected N·H with H = ${H}`);
    tokens = subsampleTokens(N, maxTokens, deriveSeed(opts.seed, 1000));
  }
  let feats: Float32Array;
  let dim: number;
  if (opts.by === 'weights') {
    dim = D;
    feats = new Float32Array(H * D);
    for (let d = 0; d < D; d++) for (let h = 0; h < H; h++) feats[h * D + d] = W1[d * H + h];
    l2NormalizeRows(feats, H, D);
  } else if (opts.by === 'activations') {
    if (!opts.activations || !tokens) throw new MoefyError("clusterNeurons: by 'activations' needs activations [N, H]");
    dim = tokens.length;
    if (dim === 0) throw new MoefyError('clusterNeurons: no calibration tokens');
    feats = new Float32Array(H * dim);
    const binary = opts.activationFeature === 'binary';
    const act = opts.activations;
    for (let i = 0; i < dim; i++) {
      const o = tokens[i] * H;
      for (let h = 0; h < H; h++) {
        const v = act[o + h];
        feats[h * dim + i] = binary ? (v > 0 ? 1 : 0) : v;
      }
    }
    l2NormalizeRows(feats, H, dim);
  } else {
    throw new MoefyError(`clusterNeurons: unknown 'by' ${(opts as { by: string }).by}`);
  }
  const km = await balancedKMeans(feats, H, dim, E, { seed: opts.seed, maxIter: opts.maxIter, nInit: opts.nInit, threads: opts.threads });
  const layout = layoutFromLabels(km.labels, E);
  const result: ClusterNeuronsResult = { ...layout, kmeans: km };
  if (opts.activations) result.concentration = activationConcentration(opts.activations, N, H, layout.labels, E, tokens);
  return result;
}
