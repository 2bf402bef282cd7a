// A small structural pattern matcher over the IR, matching from a root node up through producers. Add and Mul
// match with their operands in either order. When a pattern fails, the result names the node and the predicate
// that broke the closest partial match, so "why didn't it match?" has an answer.
import { DataType } from '../onnx/schema';
import { Node, Value } from './graph';

export type Pattern = OpPattern | AnyPattern | SamePattern | ScalarPattern | InitPattern;

export interface OpPattern {
  kind: 'op';
  op: string | string[];
  inputs?: Pattern[];
  /** Try both operand orders (default: true for Add and Mul with two inputs). */
  commute?: boolean;
  /** Capture the node under this name (and its output 0 under `${capture}.out`). */
  capture?: string;
  /** Extra condition on the node: returns null when it holds, else the reason it does not. */
  where?: (n: Node, m: Captures) => string | null;
  /** The intermediate output must have no other consumer (default true: the matched chain is private). */
  singleUse?: boolean;
}
export interface AnyPattern {
  kind: 'any';
  capture?: string;
  where?: (v: Value) => string | null;
}
export interface SamePattern {
  kind: 'same';
  name: string;
}
export interface ScalarPattern {
  kind: 'scalar';
  value: number;
  /** Relative tolerance; default: constantTolerance of the constant's own type. */
  tol?: number;
}

/**
 * Relative tolerance for matching an exporter's constant against its exact value: two units in the last place of
 * the constant's own type (the dynamo exporter writes 0.797884524 where TorchScript writes 0.797884583 for
 * √(2/π) = 0.7978845608; a float16 model holds 0.7979). Anything further off is a different function, and the match
 * fails naming the constant.
 */
export function constantTolerance(dataType: number | undefined): number {
  if (dataType === DataType.FLOAT16) return 2 ** -9;
  if (dataType === DataType.BFLOAT16) return 2 ** -6;
  return 2 ** -22;
}
export interface InitPattern {
  kind: 'init';
  capture?: string;
  where?: (v: Value) => string | null;
}

export const P = {
  op: (op: string | string[], inputs?: Pattern[], opts: Omit<OpPattern, 'kind' | 'op' | 'inputs'> = {}): OpPattern => ({ kind: 'op', op, inputs, ...opts }),
  any: (capture?: string, where?: (v: Value) => string | null): AnyPattern => ({ kind: 'any', capture, where }),
  same: (name: string): SamePattern => ({ kind: 'same', name }),
  scalar: (value: number, tol?: number): ScalarPattern => ({ kind: 'scalar', value, tol }),
  init: (capture?: string, where?: (v: Value) => string | null): InitPattern => ({ kind: 'init', capture, where }),
};

export interface Captures {
  values: Record<string, Value>;
  nodes: Record<string, Node>;
}

export interface MatchFailure {
  /** The node at which the closest partial match broke (null: the root value had no producer). */
  node: Node | null;
  /** What was expected there. */
  predicate: string;
  /** How close the partial match came: pattern nodes matched before the failure (×1000) plus its depth (higher = closer). */
  depth: number;
}

export type MatchResult = ({ ok: true; matched: Node[] } & Captures) | { ok: false; failure: MatchFailure };

export function describeFailure(f: MatchFailure): string {
  return f.node ? `at node ${f.node.describe()}: ${f.predicate}` : f.predicate;
}

class Matcher {
  best: MatchFailure = { node: null, predicate: 'no match attempted', depth: -1 };
  /**
   * Records a failure; the closest one is the one with the most pattern nodes matched (`matched`), then the deepest.
   * (Counting only the depth made a pattern that failed on its first constant lose to another that matched one more
   * node before failing, even when the rest of the first pattern matched completely.)
   */
  fail(node: Node | null, predicate: string, depth: number, matched: Node[] = []): false {
    const score = matched.length * 1000 + depth;
    if (score > this.best.depth) this.best = { node, predicate, depth: score };
    return false;
  }

  /** Matches a value against a pattern; on success returns the new captures/matched lists. */
  value(v: Value | null, p: Pattern, c: Captures, matched: Node[], depth: number, from: Node | null, slot: number): { c: Captures; matched: Node[] } | false {
    const where = from ? `input ${slot}` : 'root';
    if (!v) return this.fail(from, `${where} is missing`, depth, matched);
    switch (p.kind) {
      case 'any': {
        if (p.where) {
          const r = p.where(v);
          if (r) return this.fail(from, `${where} ('${v.name}'): ${r}`, depth, matched);
        }
        if (p.capture && c.values[p.capture] && c.values[p.capture] !== v) return this.fail(from, `${where} should be '${c.values[p.capture].name}', found '${v.name}'`, depth, matched);
        return { c: p.capture ? { ...c, values: { ...c.values, [p.capture]: v } } : c, matched };
      }
      case 'same': {
        const want = c.values[p.name];
        if (want !== v) return this.fail(from, `${where} should be the same value as ${p.name} ('${want?.name}'), found '${v.name}'`, depth, matched);
        return { c, matched };
      }
      case 'scalar': {
        const s = v.scalar();
        if (s === undefined) return this.fail(from, `${where} should be the constant ${p.value}, found a non-constant '${v.name}'`, depth, matched);
        const tol = p.tol ?? constantTolerance(v.constantTensor()?.dataType);
        if (Math.abs(s - p.value) > tol * Math.abs(p.value)) {
          // Seven digits (a float32's) unless that would print the wanted value itself.
          const shown = Number(s.toPrecision(7)) === p.value ? s : Number(s.toPrecision(7));
          return this.fail(from, `${where} should be the constant ${p.value}, found ${shown}`, depth, matched);
        }
        return { c, matched };
      }
      case 'init': {
        if (!v.tensor) return this.fail(from, `${where} should be an initializer (a weight), found '${v.name}'${v.producer ? ` computed by ${v.producer.describe()}` : ''}`, depth, matched);
        if (p.where) {
          const r = p.where(v);
          if (r) return this.fail(from, `${where} ('${v.name}'): ${r}`, depth, matched);
        }
        return { c: p.capture ? { ...c, values: { ...c.values, [p.capture]: v } } : c, matched };
      }
      case 'op': {
        const n = v.producer;
        const ops = Array.isArray(p.op) ? p.op : [p.op];
        if (!n) return this.fail(from, `${where} should be computed by ${ops.join('|')}, but '${v.name}' is ${v.tensor ? 'an initializer' : 'a graph input'}`, depth, matched);
        if (!ops.includes(n.opType) || n.domain !== '') return this.fail(from, `${where} should be computed by ${ops.join('|')}, found ${n.describe()}`, depth, matched);
        if (from && (p.singleUse ?? true) && (v.useCount !== 1 || v.isGraphOutput)) return this.fail(n, `its output '${v.name}' is also used elsewhere (${v.useCount} uses)`, depth, matched);
        return this.node(n, p, c, matched, depth);
      }
    }
  }

  node(n: Node, p: OpPattern, c: Captures, matched: Node[], depth: number): { c: Captures; matched: Node[] } | false {
    if (matched.includes(n)) return { c, matched };
    if (p.capture) {
      if (c.nodes[p.capture] && c.nodes[p.capture] !== n) return this.fail(n, `should be the node captured as ${p.capture}`, depth);
      c = { values: { ...c.values, [`${p.capture}.out`]: n.output(0) }, nodes: { ...c.nodes, [p.capture]: n } };
    }
    const ins = p.inputs;
    const orders: number[][] = [];
    if (!ins) orders.push([]);
    else {
      orders.push(ins.map((_, k) => k));
      const commute = p.commute ?? (ins.length === 2 && ['Add', 'Mul'].includes(n.opType));
      if (commute && ins.length === 2) orders.push([1, 0]);
    }
    if (ins && n.inputs.filter((x) => x).length < ins.length) return this.fail(n, `expected ${ins.length} inputs, found ${n.inputs.length}`, depth, matched);
    // Constant operands are checked after the others, so a wrong constant is reported after the rest of the
    // pattern has matched (scalar patterns capture nothing, so the order does not change what matches).
    const seq = ins ? [...ins.keys()].sort((a, b) => Number(ins[a].kind === 'scalar') - Number(ins[b].kind === 'scalar')) : [];
    for (const order of orders) {
      let cur: { c: Captures; matched: Node[] } | false = { c, matched: [...matched, n] };
      for (let j = 0; j < seq.length && cur; j++) {
        const k = seq[j];
        cur = this.value(n.inputs[order[k]] ?? null, ins![k], cur.c, cur.matched, depth + 1 + k, n, order[k]);
      }
      if (cur && p.where) {
        const r = p.where(n, cur.c);
        if (r) cur = this.fail(n, r, depth + 1 + order.length, cur.matched);
      }
      if (cur) return cur;
    }
    return false;
  }
}

/** Matches `pattern` with `root` as its top node. */
export function match(root: Node, pattern: OpPattern): MatchResult {
  const m = new Matcher();
  const ops = Array.isArray(pattern.op) ? pattern.op : [pattern.op];
  if (!ops.includes(root.opType) || root.domain !== '') return { ok: false, failure: { node: root, predicate: `should be ${ops.join('|')}`, depth: 0 } };
  const r = m.node(root, pattern, { values: {}, nodes: {} }, [], 0);
  if (r) return { ok: true, ...r.c, matched: r.matched };
  return { ok: false, failure: m.best };
}

/** Tries several alternative patterns; on failure reports the closest partial match over all of them. */
export function matchAny(root: Node, patterns: { name: string; pattern: OpPattern }[]): (MatchResult & { name: string }) {
  let best: { name: string; failure: MatchFailure } | null = null;
  for (const { name, pattern } of patterns) {
    const r = match(root, pattern);
    if (r.ok) return { ...r, name };
    if (!best || r.failure.depth > best.failure.depth) best = { name, failure: r.failure };
  }
  return { ok: false, failure: best!.failure, name: best!.name };
}
