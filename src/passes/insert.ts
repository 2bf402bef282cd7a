// Stage insert → the converted model: a copy of the model with each FFN replaced by the router subgraph (ffn_in →
// norms) and an ai.moefy::DynamicMoE node with the permuted (or repaired) expert weights; one `moe_threshold` graph
// input (one value per scale, calibrated defaults in its initializer) feeds every node, so a deployer can trade
// quality for compute per run without re-exporting. The plan's routing rule is the nodes' `routing` attribute
// (written only when it is not the default, relative: such a model is what moefy wrote before the attribute), and a
// fitted skip_bias their ninth input.
import { PRECISION_DTYPE } from '../analysis/exporter-styles';
import { writeRouter } from '../analysis/router-graph';
import type { FfnSite, PatchLayout } from '../analysis/var-structure';
import { MoefyError } from '../errors';
import { attr } from '../ir/graph';
import { ModelCopy } from '../ir/model';
import { DataType } from '../onnx/schema';
import { Tensor } from '../onnx/tensor';
import { DEFAULT_ROUTING, dynamicMoeFunction, MOE_DOMAIN, MOE_OP, MOE_OPSET, THRESHOLD_INPUT } from '../op';
import { stage } from '../stages/stage';
import type { ExpertWeights, RouterSet, ThresholdPlan } from '../stages/types';

export const insertStage = stage({
  name: 'insert',
  needs: ['model', 'structure', 'sites', 'recipe', 'weights', 'repaired', 'routers', 'plan'],
  gives: 'output',
  steps: () => 1,
  run: ({ model, structure, sites, recipe, weights, repaired, routers, plan }) => {
    const copy = model.clone();
    insert(copy, structure.layout, sites, recipe.experts, repaired?.weights ?? weights, routers, plan);
    return copy.model;
  },
  summary: (_, { sites, recipe }) => `replaced ${sites.length} FFNs by routers + ${MOE_DOMAIN}::${MOE_OP} (${recipe.experts} experts of ${sites[0].H / recipe.experts})`,
  layerReport: (_, k, { sites, recipe }) => ({ D: sites[k].D, H: sites[k].H, experts: recipe.experts, expertSize: sites[k].H / recipe.experts }),
});

/** Replaces every FFN of `sites` (the analysis of the model `copy` was made from) by its router and a DynamicMoE node. */
export function insert(copy: ModelCopy, layout: PatchLayout, sites: FfnSite[], experts: number, weights: ExpertWeights[], routers: RouterSet, plan: ThresholdPlan): void {
  const m = copy.model;
  const g = m.graph;
  const opset = m.opset('') ?? 0;
  const acts = new Set(weights.map((w) => w.activation));
  if (acts.size > 1) throw new MoefyError(`the FFNs use different activations (${[...acts].join(', ')}); one DynamicMoE function body cannot serve them`);
  const activation = weights[0].activation;
  // The MoE keeps the model's precision: routers, expert weights and the op's T in float16 for a float16 model
  // (calibration computed them in float32). The threshold input stays float32, as the op contract says.
  const precisions = new Set(sites.map((s) => s.precision));
  if (precisions.size > 1) throw new MoefyError(`the FFNs compute in different float types (${[...precisions].join(', ')}); one DynamicMoE function body cannot serve them`);
  const DT = PRECISION_DTYPE[sites[0].precision];
  const numScales = layout.patchNums.length;
  // One function body serves every node: all of them carry a skip_bias or none does.
  const skipBias = weights.some((w) => w.skipBias);
  if (skipBias && !weights.every((w) => w.skipBias)) throw new Error('insert: a skip_bias for some FFNs only');
  const routing = plan.routing;

  const thr = g.addInitializer(THRESHOLD_INPUT, Tensor.fromFloat32(Float32Array.from(plan.thresholds), [numScales]));
  thr.setTensorType(DataType.FLOAT, [numScales]);
  g.inputs.push(thr);

  sites.forEach((s, k) => {
    const E = experts;
    const w = weights[k];
    const r = routers.routers[k];
    const prefix = `/moefy/block${s.block}`;
    if (!s.moeIo) throw new MoefyError(`block ${s.block}: Gemm FFN ${s.fc1.node.describe()} is not between Reshapes to and from [B, L, D]`);
    const X = copy.valueOf(s.moeIo.X), Yold = copy.valueOf(s.moeIo.Y);
    const D = s.D, H = s.H;
    const anchor = Yold.uses()[0]?.node;
    const norms = writeRouter(g, X, r, { opset, dataType: DT, name: `${prefix}/router`, normsName: `${prefix}/norms`, before: anchor });
    norms.setTensorType(DT, [null, null, E]);
    g.valueInfo.push(norms);

    const W1 = g.addInitializer(`${prefix}/moe.W1`, Tensor.fromFloats(w.W1, [D, H], DT));
    const B1 = g.addInitializer(`${prefix}/moe.B1`, Tensor.fromFloats(w.B1, [H], DT));
    const W2 = g.addInitializer(`${prefix}/moe.W2`, Tensor.fromFloats(w.W2, [H, D], DT));
    const B2 = g.addInitializer(`${prefix}/moe.B2`, Tensor.fromFloats(w.B2 ?? new Float32Array(D), [D], DT));
    const SB = w.skipBias ? [g.addInitializer(`${prefix}/moe.skip_bias`, Tensor.fromFloats(w.skipBias, [E, D], DT))] : [];
    const moe = g.addNode({
      op: MOE_OP, domain: MOE_DOMAIN, name: `${prefix}/DynamicMoE`,
      inputs: [X, norms, W1, B1, W2, B2, null, thr, ...SB], // MOE_INPUTS order; scale_index empty
      // `active` is always wired: the function body computes it, and the runtime's per-scale summary reads it.
      outputs: [`${prefix}/moe_out`, `${prefix}/active`],
      attrs: [
        attr.int('num_experts', E), attr.string('activation', activation), attr.ints('patch_nums', layout.patchNums), attr.floats('threshold', plan.thresholds),
        ...(routing !== DEFAULT_ROUTING ? [attr.string('routing', routing)] : []),
      ],
    });
    const Y = moe.output(0);
    Y.setTensorType(DT, [null, null, D]);
    g.valueInfo.push(Y);
    g.replaceAllUses(Yold, Y, 'move');
  });
  g.removeDeadNodes();
  g.toposort();
  m.setOpset(MOE_DOMAIN, MOE_OPSET);
  m.addFunction(dynamicMoeFunction(activation, opset, DT, { routing, skipBias }));
  // Model-local functions need IR 8.
  if (m.irVersion < 8) m.proto.ir_version = 8;
}
