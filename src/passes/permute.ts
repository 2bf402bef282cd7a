// Pass: reorder W1 columns, B1 and W2 rows so that expert e owns a contiguous block; fc2's bias stays outside.
import { permuteFfn } from '../calib/expert-norms';
import { fc1Weights, fc2Weights } from './ffn-weights';
import { ConversionState, PassResult } from './types';

export function permute(st: ConversionState): PassResult {
  st.weights = st.sites.map((s, k) => {
    const { W1, B1 } = fc1Weights(s);
    const { W2, B2 } = fc2Weights(s);
    const p = permuteFfn(W1, B1, W2, s.D, st.layouts[k].order);
    return { W1: p.W1, B1: p.B1, W2: p.W2, B2, activation: st.expertActivation[k] };
  });
  return { name: 'permute', summary: `permuted ${st.sites.length} FFNs into expert-contiguous layout` };
}
