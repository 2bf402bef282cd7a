/**
 * Plain TypeScript reference of the DynamicMoE op (docs/dynamic-moe.md), written for clarity, used by tests.
 * Routing is the contract's (src/op/routing.ts, float32 as the kernels); the expert math is accumulated in float64.
 */
import { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../errors';
import { activate, ActivationKind, DEFAULT_ACTIVATION, DEFAULT_ROUTING, routeToken, RoutingRule, scaleOfPositions } from '../op';

export type Activation = ActivationKind;

export interface DynamicMoeInputs {
  X: Tensor; // float32 [B, L, D]
  norms: Tensor; // float32 [B, L, E]
  W1: Tensor; // float32 [D, E*S]
  B1: Tensor; // float32 [E*S]
  W2: Tensor; // float32 [E*S, D]
  B2?: Tensor; // float32 [D]
  scaleIndex?: number | bigint | Tensor;
  threshold?: Tensor | Float32Array | number[]; // one per scale, overrides the attribute
  skipBias?: Tensor; // float32 [E, D]: added for each expert a token skips
}

export interface DynamicMoeAttributes {
  numExperts: number;
  activation?: Activation;
  patchNums: number[];
  threshold?: number[];
  routing?: RoutingRule;
}

export interface DynamicMoeResult {
  Y: Tensor; // float32 [B, L, D]
  active: Tensor; // int32 [B, L]
}

/** The op's layout rule (src/op), or throws MoefyError naming L and the layout. */
function layoutScales(L: number, patchNums: number[], scaleIndex?: number): number[] {
  if (scaleIndex !== undefined && (scaleIndex < 0 || scaleIndex >= patchNums.length)) throw new MoefyError(`scale_index ${scaleIndex} out of range`);
  const s = scaleOfPositions(L, patchNums, scaleIndex);
  if (!s) throw new MoefyError(`cannot infer the scale of the tokens: L = ${L} (full sequence ${patchNums.reduce((a, p) => a + p * p, 0)}, patch_nums ${patchNums.join(',')})`);
  return s;
}

export function dynamicMoeReference(inputs: DynamicMoeInputs, attrs: DynamicMoeAttributes): DynamicMoeResult {
  const act = attrs.activation ?? DEFAULT_ACTIVATION;
  const E = attrs.numExperts;
  const [B, L, D] = inputs.X.dims;
  const ES = inputs.W1.dims[1];
  const S = ES / E;
  if (inputs.X.dims.length !== 3 || inputs.W1.dims[0] !== D || !Number.isInteger(S)) throw new MoefyError('bad shapes');
  const X = inputs.X.data as Float32Array;
  const NR = inputs.norms.data as Float32Array;
  const W1 = inputs.W1.data as Float32Array;
  const B1 = inputs.B1.data as Float32Array;
  const W2 = inputs.W2.data as Float32Array;
  const B2 = inputs.B2 ? (inputs.B2.data as Float32Array) : undefined;
  const SB = inputs.skipBias ? (inputs.skipBias.data as Float32Array) : undefined;
  if (SB && (inputs.skipBias!.dims.length !== 2 || inputs.skipBias!.dims[0] !== E || inputs.skipBias!.dims[1] !== D)) throw new MoefyError('bad skip_bias shape');
  const routing = attrs.routing ?? DEFAULT_ROUTING;

  let thrSrc: ArrayLike<number> = attrs.threshold ?? new Array(attrs.patchNums.length).fill(0);
  if (inputs.threshold !== undefined) {
    const th = inputs.threshold;
    thrSrc = th instanceof Tensor ? (th.data as Float32Array) : (th as ArrayLike<number>);
  }
  const thr = Float32Array.from(thrSrc);
  let si: number | undefined;
  if (inputs.scaleIndex !== undefined) {
    const v = inputs.scaleIndex instanceof Tensor ? (inputs.scaleIndex.data as BigInt64Array)[0] : inputs.scaleIndex;
    si = Number(v);
  }
  const scaleOf = layoutScales(L, attrs.patchNums, si);

  const Y = new Float32Array(B * L * D);
  const active = new Int32Array(B * L);
  const h = new Float64Array(S);
  const y = new Float64Array(D);
  const runs = new Uint8Array(E);
  for (let t = 0; t < B * L; t++) {
    active[t] = routeToken(NR.subarray(t * E, (t + 1) * E), 0, E, routing, thr[scaleOf[t % L]], runs);
    y.fill(0);
    if (B2) for (let d = 0; d < D; d++) y[d] = B2[d];
    for (let e = 0; e < E; e++) {
      if (!runs[e]) {
        if (SB) for (let d = 0; d < D; d++) y[d] += SB[e * D + d];
        continue;
      }
      // h = act(x · W1[:, eS:eS+S] + B1[eS:eS+S])
      for (let j = 0; j < S; j++) {
        let acc = B1[e * S + j];
        for (let d = 0; d < D; d++) acc += X[t * D + d] * W1[d * ES + e * S + j];
        h[j] = activate(acc, act);
      }
      // y += h · W2[eS:eS+S, :]
      for (let j = 0; j < S; j++) {
        const hv = h[j];
        if (hv === 0) continue;
        const row = (e * S + j) * D;
        for (let d = 0; d < D; d++) y[d] += hv * W2[row + d];
      }
    }
    for (let d = 0; d < D; d++) Y[t * D + d] = y[d];
  }
  return { Y: new Tensor('float32', Y, [B, L, D]), active: new Tensor('int32', active, [B, L]) };
}
