// VAR's token sampling (sample_with_top_k_top_p_), by inverse CDF so that close distributions draw the same token
// from the same uniform number.

/** VAR's top-k then top-p filter, then a draw by inverse CDF with uniform u over the tokens in descending order. */
export function sampleTopKTopP(logits: Float32Array, off: number, V: number, topK: number, topP: number, u: number, order: Int32Array, probs: Float64Array): number {
  for (let v = 0; v < V; v++) order[v] = v;
  const sorted = Array.from(order).sort((a, b) => logits[off + b] - logits[off + a] || a - b);
  const k = topK > 0 ? Math.min(V, topK) : V;
  const m = logits[off + sorted[0]];
  let z = 0;
  for (let i = 0; i < k; i++) {
    probs[i] = Math.exp(logits[off + sorted[i]] - m);
    z += probs[i];
  }
  for (let i = 0; i < k; i++) probs[i] /= z;
  // top-p: drop the tail (from the least likely) while its cumulative mass stays <= 1 − top_p; keep the top token.
  let keep = k;
  if (topP > 0 && topP < 1) {
    let tail = 0;
    while (keep > 1 && tail + probs[keep - 1] <= 1 - topP) {
      tail += probs[keep - 1];
      keep--;
    }
  }
  let mass = 0;
  for (let i = 0; i < keep; i++) mass += probs[i];
  let c = 0;
  const target = u * mass;
  for (let i = 0; i < keep; i++) {
    c += probs[i];
    if (target < c) return sorted[i];
  }
  return sorted[keep - 1];
}
