// Pass: per layer a router MLP D → width → E (GELU, no biases, Abs) trained on the captured tokens to regress each
// expert's true output L2 norm (fc2 bias excluded), MSE + Adam, seeded, with a held-out split.
import { computeExpertNorms } from '../calib/expert-norms';
import { deriveSeed } from '../calib/random';
import { predictNorms, trainRouter } from '../calib/router-train';
import { ConversionState, PassResult } from './types';

/** True and predicted norms on the captured tokens, kept for threshold selection. */
export interface LayerNorms {
  trueNorms: Float32Array;
  predicted: Float32Array;
}

export async function routers(st: ConversionState, norms: LayerNorms[], onLayer?: (k: number) => void): Promise<PassResult> {
  const E = st.options.experts;
  st.routers = [];
  for (let k = 0; k < st.sites.length; k++) {
    const s = st.sites[k];
    const c = st.captures[k];
    const w = st.weights[k];
    const targets = await computeExpertNorms(c.X, c.N, s.D, w.W1, w.B1, w.W2, E, w.activation);
    // Fitting √norm weighs the small norms near the threshold more than MSE on raw norms does (measured: better
    // routing at equal active fraction); the emitted router squares its output back into a norm.
    const sq = st.options.routerTarget === 'sqrt';
    const fit = sq ? targets.map(Math.sqrt) : targets;
    const r = await trainRouter(c.X, fit, c.N, s.D, E, { width: st.options.routerWidth, epochs: st.options.routerEpochs, seed: deriveSeed(st.options.seed, 100 + k) });
    const p = await predictNorms(c.X, c.N, s.D, r.W1, r.W2, E, st.options.routerWidth);
    const predicted = sq ? p.map((x) => x * x) : p;
    norms.push({ trueNorms: targets, predicted });
    st.routers.push({ W1: r.W1, W2: r.W2, width: st.options.routerWidth, heldOutR2: r.heldOutR2, recall: r.recall, squared: sq });
    st.layers[k].routerR2 = r.heldOutR2;
    st.layers[k].routerRecall = r.recall;
    onLayer?.(k);
  }
  const r2 = st.routers.map((r) => r.heldOutR2);
  return { name: 'routers', summary: `trained ${st.routers.length} routers (width ${st.options.routerWidth}); held-out R² ${Math.min(...r2).toFixed(3)}–${Math.max(...r2).toFixed(3)}${st.options.routerTarget === 'sqrt' ? ' (of √norm)' : ''}` };
}

