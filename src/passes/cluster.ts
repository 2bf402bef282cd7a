// Pass: balanced k-means of each FFN's hidden neurons into E equal experts (seeded), by the L2-normalised fc1 rows
// as DMoE-VAR does, or by co-activation on the captured data. Reports how concentrated activations are per expert.
import { MoefyError } from '../errors';
import { clusterNeurons } from '../calib/kmeans';
import { computeHiddenActivations } from '../calib/expert-norms';
import { deriveSeed } from '../calib/random';
import { fc1Weights } from './ffn-weights';
import { ConversionState, PassResult } from './types';

export async function cluster(st: ConversionState, onLayer?: (k: number) => void): Promise<PassResult> {
  const E = st.options.experts;
  st.layouts = [];
  const conc: number[] = [];
  for (let k = 0; k < st.sites.length; k++) {
    const s = st.sites[k];
    if (s.H % E !== 0) throw new MoefyError(`--experts ${E} does not divide the FFN hidden size H = ${s.H} of block ${s.block}`);
    const { W1, B1 } = fc1Weights(s);
    const c = st.captures[k];
    // Activations on a seeded subsample of captured tokens: for clustering by activations and the concentration report.
    const n = Math.min(c.N, 2048);
    const stride = c.N / n;
    const Xs = new Float32Array(n * s.D);
    for (let i = 0; i < n; i++) Xs.set(c.X.subarray(Math.floor(i * stride) * s.D, (Math.floor(i * stride) + 1) * s.D), i * s.D);
    const acts = await computeHiddenActivations(Xs, n, s.D, W1, B1, st.expertActivation[k]);
    const r = await clusterNeurons(W1, s.D, s.H, E, { by: st.options.clusterBy, activations: acts, N: n, seed: deriveSeed(st.options.seed, k) });
    st.layouts.push({ experts: r.experts, expertSize: r.expertSize, order: r.order, labels: r.labels });
    const e90 = r.concentration?.expertsFor90 ?? null;
    if (e90 !== null) conc.push(e90);
    st.layers[k].clusterBy = st.options.clusterBy;
    st.layers[k].concentration = e90;
    onLayer?.(k);
  }
  const mean = conc.length ? conc.reduce((a, b) => a + b, 0) / conc.length : NaN;
  return { name: 'cluster', summary: `${st.sites.length} FFNs split into ${E} experts of ${st.sites[0].H / E} by ${st.options.clusterBy}; a token needs ${(mean * 100).toFixed(1)}% of the experts for 90% of its activation mass (mean)` };
}
