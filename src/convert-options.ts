// The conversion's options in one table: each one's flag, help, type, default and check. The library's convert(),
// the CLI (its flags, help and checks are built from the table), the tests and the benches all read it, so
// `convert(model, {experts, fromScale})` and `moefy model --experts N --from-scale S` do the same thing, and a new
// option is one entry here (plus the stage that uses it). Defaults that depend on the model or on other options are
// resolved once, in resolveForModel.
import * as path from 'node:path';
import { MoefyError } from './errors';
import { scaleRange } from './format';
import { DEFAULT_ROUTING, ROUTING_RULES, type RoutingRule } from './op';

export type ClusterBy = 'weights' | 'activations';
export type RouterTarget = 'norm' | 'sqrt';
export type ExpertActivationOption = 'relu' | 'keep';

/** A value's check, said in the flag's words when it fails. */
export type ValueCheck =
  /** A whole number ≥ min (null: any; its range is the model's, e.g. --from-scale); `why` says where min comes from. */
  | { integer: number | null; why?: string }
  /** A finite number in [min, max] (or (min, max]). */
  | { number: [number, number]; minExclusive?: boolean }
  /** Every value of a list in [min, max]; whole numbers when `integers`. */
  | { each: [number, number]; integers?: boolean };

/** One option. `T` is its value's type in the library. */
export interface OptionSpec<T> {
  /** The CLI flag, without `--`. */
  flag: string;
  alias?: string;
  /** The CLI's help line. */
  describe: string;
  /** The flag's type; a list is one comma-separated string on the command line. */
  type: 'number' | 'string' | 'boolean';
  list?: 'numbers' | 'patch-nums' | 'paths';
  choices?: readonly string[];
  required?: true;
  default?: T;
  /** The default depends on the model or other options (resolveForModel): the CLI leaves the flag unset. */
  conditional?: true;
  check?: ValueCheck;
  /** How the report (and the model's metadata) records the resolved value; default: as it is, or null. */
  record?: false | ((v: T | undefined) => unknown);
  /** Phantom: the value's type. */
  readonly value?: T;
}

const option = <T>() => <S extends OptionSpec<T>>(s: S): S & OptionSpec<T> => s;

/** Largest FFN hidden size whose repair trains the experts by default (repairEpochs): an epoch costs about 8.5 s per
 * layer at VAR-d16's H 4096 on 2 cores, so 30 epochs would take over an hour there; the closed form alone takes
 * about 30 CPU-seconds per layer (README, expert repair). */
export const REPAIR_EPOCHS_MAX_HIDDEN = 1024;

/**
 * The default router width: D/4 within 16…128. 128 is DMoE-VAR's (VAR-d16's D 1024 and up); on small models a router
 * that wide costs a large share of the FFN (15.6% at D 128, H 512, 32 experts), which the budget takes from the
 * experts: width 32 there measured better on the trained D 128 models (README, "What to expect").
 */
export const ROUTER_WIDTH = { perD: 0.25, min: 16, max: 128 } as const;

export function defaultRouterWidth(D: number): number {
  return Math.min(ROUTER_WIDTH.max, Math.max(ROUTER_WIDTH.min, Math.round(D * ROUTER_WIDTH.perD)));
}

/** Defaults that apply only in some conversions (see resolveForModel), named for their help lines. */
const BUDGET = 0.6;
const REPAIR_EPOCHS = 30;
/**
 * The routing rule of a conversion for a --budget: measured best on held-out calibration sequences of both trained
 * models (README, "Routing rules and skipped-expert compensation"). Given thresholds (--threshold, --tau) keep
 * DMoE-VAR's relative rule, whose values they are.
 */
export const BUDGET_ROUTING: RoutingRule = 'absolute';

/**
 * The options, in the order the report records them. The defaults are the recipe measured best on the trained model
 * (README, "What to expect").
 */
export const CONVERT_OPTIONS = {
  experts: option<number>()({ flag: 'experts', type: 'number', required: true, check: { integer: 1 }, describe: 'experts per FFN (must divide the hidden size)' }),
  fromScale: option<number>()({ flag: 'from-scale', type: 'number', required: true, check: { integer: null }, describe: 'first scale (1-based) that runs as MoE' }),
  activation: option<ExpertActivationOption>()({ flag: 'activation', type: 'string', choices: ['relu', 'keep'], default: 'relu', describe: "experts' activation: ReLU (DMoE-VAR) or keep the model's" }),
  clusterBy: option<ClusterBy>()({
    flag: 'cluster-by', type: 'string', choices: ['weights', 'activations'], default: 'activations',
    describe: 'cluster neurons by co-activation on the calibration data (default: measured better) or by fc1 weights (DMoE-VAR reference)',
  }),
  seed: option<number>()({ flag: 'seed', type: 'number', default: 0, check: { integer: 0 }, describe: 'seed of every random choice' }),
  thresholds: option<number[]>()({ flag: 'threshold', type: 'string', list: 'numbers', check: { each: [0, 1] }, describe: 'thresholds for scales from-scale…last, comma-separated (or one for all)' }),
  tau: option<number[]>()({ flag: 'tau', type: 'string', list: 'numbers', check: { each: [0, 1] }, describe: "DMoE-VAR's tau per scale (threshold = 1 − tau)" }),
  budget: option<number>()({
    flag: 'budget', type: 'number', default: BUDGET, conditional: true, check: { number: [0, 1], minExclusive: true },
    describe: `fraction of the dense FFN FLOPs the MoE scales may spend, routers included (default ${BUDGET} without --threshold or --tau)`,
  }),
  routing: option<RoutingRule>()({
    flag: 'routing', type: 'string', choices: ROUTING_RULES, conditional: true,
    describe: `which experts a token runs: relative (norm ≥ t·max, DMoE-VAR's), absolute (norm ≥ t, norms normalised per layer) or topk (the k largest) (default ${BUDGET_ROUTING} with --budget, ${DEFAULT_ROUTING} with --threshold or --tau)`,
  }),
  calib: option<string>()({ flag: 'calib', type: 'string', record: (v) => (v ? path.basename(v) : null), describe: 'calibration inputs: a folder of .bin + manifest.json, or an .npz' }),
  kvPrefix: option<string[]>()({
    flag: 'kv-prefix', type: 'string', list: 'paths', record: false,
    describe: 'step graphs: comma-separated graphs of the earlier scales (scale 1 first), run to build the KV cache from full-sequence --calib data',
  }),
  routerWidth: option<number>()({
    flag: 'router-width', type: 'number', conditional: true, check: { integer: 1 },
    describe: `router hidden width (default: D/${1 / ROUTER_WIDTH.perD} within ${ROUTER_WIDTH.min}…${ROUTER_WIDTH.max})`,
  }),
  routerEpochs: option<number>()({ flag: 'router-epochs', type: 'number', default: 25, check: { integer: 1 }, describe: 'router training epochs' }),
  routerTarget: option<RouterTarget>()({ flag: 'router-target', type: 'string', choices: ['sqrt', 'norm'], default: 'sqrt', describe: 'router regresses √norm (default, routes better) or the norm itself (DMoE-VAR)' }),
  repair: option<boolean>()({
    flag: 'repair', type: 'boolean', conditional: true,
    describe: `refit the experts to the dense FFN's outputs on the calibration data under the chosen routing (default: on for GELU models converted for a --budget, H ≤ ${REPAIR_EPOCHS_MAX_HIDDEN}; --no-repair turns it off)`,
  }),
  repairEpochs: option<number>()({
    flag: 'repair-epochs', type: 'number', default: REPAIR_EPOCHS, conditional: true, check: { integer: 0 },
    describe: `repair, then train all expert weights for up to N epochs (default ${REPAIR_EPOCHS} when repairing FFNs with H ≤ ${REPAIR_EPOCHS_MAX_HIDDEN}, else 0; 0: closed form only)`,
  }),
  skipBias: option<boolean>()({
    flag: 'skip-bias', type: 'boolean', conditional: true,
    describe: 'fit a vector per expert that a token adds when it skips that expert (the op\'s skip_bias), jointly with the repair or alone (default: with a closed-form-only repair; --no-skip-bias turns it off)',
  }),
  patchNums: option<number[]>()({ flag: 'patch-nums', type: 'string', list: 'patch-nums', check: { each: [1, Infinity], integers: true }, describe: 'patch side per scale (default VAR 1,2,3,4,5,6,8,10,13,16)' }),
  synthSamples: option<number>()({ flag: 'synth-samples', type: 'number', default: 16, check: { integer: 1 }, record: false, describe: 'samples to synthesise without --calib' }),
  maxTokens: option<number>()({ flag: 'max-tokens', type: 'number', default: 65536, check: { integer: 2, why: 'router training holds some of the tokens out to measure its fit' }, record: false, describe: 'captured tokens per layer (seeded subsample above this)' }),
} as const;

type Table = typeof CONVERT_OPTIONS;
type ValueOf<S> = S extends OptionSpec<infer T> ? T : never;
type RequiredKeys = { [K in keyof Table]: Table[K] extends { required: true } ? K : never }[keyof Table];
type DefaultedKeys = { [K in keyof Table]: Table[K] extends { default: unknown } ? K : never }[keyof Table];

/** The options a caller gives: the two required ones and any others (the rest take their defaults). */
export type ConvertOptions = { [K in RequiredKeys]: ValueOf<Table[K]> } & { [K in Exclude<keyof Table, RequiredKeys>]?: ValueOf<Table[K]> };

/** Every static default. */
export const CONVERT_DEFAULTS = Object.fromEntries(
  Object.entries(CONVERT_OPTIONS).filter(([, s]) => 'default' in s).map(([k, s]) => [k, (s as OptionSpec<unknown>).default]),
) as { readonly [K in DefaultedKeys]: Table[K] extends { default: infer D } ? D : never };

/**
 * The options of one conversion with every default resolved for its model: what the stages read and what the report
 * records. `budget` is null when thresholds were given (--threshold, --tau); `repairEpochs` is 0 without repair.
 */
export type Recipe = Omit<ConvertOptions, DefaultedKeys | 'routerWidth' | 'repair' | 'patchNums' | 'routing' | 'skipBias'> &
  { [K in Exclude<DefaultedKeys, 'budget'>]: ValueOf<Table[K]> } &
  { budget: number | null; routerWidth: number; repair: boolean; patchNums: number[]; routing: RoutingRule; skipBias: boolean };

/** What the defaults and checks need to know of the model. */
export interface ModelFacts {
  /** Model width. */
  D: number;
  /** The patch layout the conversion uses. */
  patchNums: number[];
  /** For a step graph of one scale, that scale (1-based); else null. */
  stepScale: number | null;
  ffns: { block: number; H: number; activation: string }[];
}

const got = (v: unknown) => (typeof v === 'number' && Number.isNaN(v) ? 'the value given is not a number' : `got ${String(v)}`);

/** One option's value against its check and choices; throws a MoefyError naming the flag. */
function checkValue(spec: OptionSpec<unknown>, v: unknown): void {
  const f = `--${spec.flag}`;
  if (spec.choices && !spec.choices.includes(v as string)) throw new MoefyError(`${f} must be one of ${spec.choices.join(', ')} (${got(v)})`);
  const c = spec.check;
  if (!c) return;
  if ('integer' in c) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || (c.integer !== null && v < c.integer)) throw new MoefyError(`${f} must be a whole number${c.integer !== null ? ` ≥ ${c.integer}` : ''}${c.why ? `: ${c.why}` : ''} (${got(v)})`);
  } else if ('number' in c) {
    const [min, max] = c.number;
    const n = v as number;
    if (typeof v !== 'number' || !Number.isFinite(v) || !(c.minExclusive ? n > min : n >= min) || n > max) throw new MoefyError(`${f} must be a number in ${c.minExclusive ? '(' : '['}${min}, ${max}] (${got(v)})`);
  } else {
    const [min, max] = c.each;
    const bad = (v as number[]).find((x) => !(x >= min && x <= max) || (c.integers && !Number.isInteger(x)));
    if (bad !== undefined) throw new MoefyError(`${f} value ${bad} is outside [${min}, ${max === Infinity ? '∞)' : `${max}]`}${c.integers ? ' or not a whole number' : ''}`);
  }
}

/** The checks that need no model: each given value, then the options that exclude each other. */
export function checkOptions(o: ConvertOptions): void {
  for (const [key, spec] of Object.entries(CONVERT_OPTIONS) as [keyof Table, OptionSpec<unknown>][]) {
    const v = o[key];
    if (v === undefined) {
      if (spec.required) throw new MoefyError(`--${spec.flag} is required`);
      continue;
    }
    checkValue(spec, v);
  }
  const given = [o.thresholds && '--threshold', o.tau && '--tau', o.budget !== undefined && '--budget'].filter(Boolean);
  if (given.length > 1) throw new MoefyError(`give one of --threshold, --tau and --budget, not ${given.join(' and ')}`);
  if ((o.repairEpochs ?? 0) > 0 && o.repair === false) throw new MoefyError('--repair-epochs needs the repair (it was turned off with --no-repair)');
  if (o.tau && o.routing && o.routing !== 'relative') throw new MoefyError(`--tau is DMoE-VAR's relative rule (threshold = 1 − τ); it cannot be given with --routing ${o.routing} (give --threshold)`);
}

/** The checks against the model, then every default resolved for it. */
export function resolveForModel(o: ConvertOptions, m: ModelFacts): Recipe {
  const S = m.patchNums.length;
  for (const f of m.ffns) if (f.H % o.experts !== 0) throw new MoefyError(`--experts ${o.experts} does not divide the FFN hidden size H = ${f.H} (block ${f.block})`);
  if (o.fromScale < 1 || o.fromScale > S) throw new MoefyError(`--from-scale ${o.fromScale} is out of range: the model has scales 1…${S}`);
  const n = S - o.fromScale + 1;
  for (const [flag, list] of [['threshold', o.thresholds], ['tau', o.tau]] as const) {
    if (list && list.length !== n && list.length !== 1) throw new MoefyError(`--${flag} has ${list.length} values; ${n === 1 ? `scale ${S} takes 1` : `${scaleRange(o.fromScale, S)} need ${n} (or 1 for all)`}`);
  }
  if (m.stepScale !== null && m.stepScale < o.fromScale)
    throw new MoefyError(`this step graph computes scale ${m.stepScale}, before --from-scale ${o.fromScale}: it has nothing to run as MoE (convert only the step graphs of ${scaleRange(o.fromScale, S)})`);
  const d = CONVERT_DEFAULTS;
  const given = !!(o.thresholds || o.tau);
  // Repair is the default for models whose FFNs are not ReLU (stock GELU checkpoints) when the thresholds are chosen
  // for a budget: measured far better there. On ReLU-fine-tuned models it gains too, but a refitted W2 serves every
  // scale, so the dense scales and `moe_threshold` 0 would no longer be the dense model: there it is asked for
  // (--repair). With given thresholds (--threshold/--tau) the experts stay the model's own. The gradient fit after
  // the closed form is the default only for FFNs up to REPAIR_EPOCHS_MAX_HIDDEN (its cost).
  const repair = o.repair ?? ((o.repairEpochs ?? 0) > 0 || (!given && m.ffns.some((f) => f.activation !== 'relu')));
  const repairEpochs = o.repairEpochs ?? (m.ffns.every((f) => f.H <= REPAIR_EPOCHS_MAX_HIDDEN) ? d.repairEpochs : 0);
  // Skipped-expert compensation (skip_bias) is the default where it measured better: with a repair by the closed form
  // alone (the default above REPAIR_EPOCHS_MAX_HIDDEN), fitted jointly with W2, b2. After the gradient epochs it gained
  // nothing, and fitted alone on a ReLU model it lost a little (README, "Routing rules and skipped-expert
  // compensation"); asked for without the repair (--skip-bias), it is fitted alone, which keeps the dense scales exact.
  const skipBias = o.skipBias ?? (repair && repairEpochs === 0);
  const statics = Object.entries(CONVERT_OPTIONS).filter(([, spec]) => 'default' in spec && !('conditional' in spec));
  return {
    ...o,
    ...Object.fromEntries(statics.map(([k, spec]) => [k, o[k as keyof ConvertOptions] ?? (spec as OptionSpec<unknown>).default])),
    budget: given ? null : o.budget ?? d.budget,
    routerWidth: o.routerWidth ?? defaultRouterWidth(m.D),
    repair,
    repairEpochs: repair ? repairEpochs : 0,
    patchNums: m.patchNums,
    routing: o.routing ?? (given ? DEFAULT_ROUTING : BUDGET_ROUTING),
    skipBias,
  } as Recipe;
}

/** The options as the report and the model's metadata record them, in the table's order. */
export function recordedOptions(r: Recipe): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(CONVERT_OPTIONS) as [keyof Table, OptionSpec<unknown>][]) {
    if (spec.record === false) continue;
    const v = (r as Record<string, unknown>)[key];
    out[key] = spec.record ? spec.record(v) : v ?? null;
  }
  return out;
}
