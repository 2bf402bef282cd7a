// The one shape of a conversion stage: it names what it reads of the conversion's data (types.ts, Conversion) and
// what it adds, runs on what it reads without changing it, and says its line, warnings and report fields. pipeline.ts
// lists the stages in data-flow order; a new stage is one module exporting one of these, and a line in that list.
import type { Conversion } from './types';

/** Progress of a running stage: `done` of `total` (layers, samples); total defaults to the stage's steps. */
export type Progress = (done: number, total?: number) => void;

export interface Stage<Needs extends keyof Conversion, Gives extends keyof Conversion> {
  /** Its line on the terminal and its row in the report's `passes`. */
  name: string;
  needs: readonly Needs[];
  gives: Gives;
  /** Whether it runs in this conversion (default: always); one that does not gives null. */
  runs?(c: Pick<Conversion, Needs>): boolean;
  /** What its progress bar counts at first. */
  steps(c: Pick<Conversion, Needs>): number;
  run(c: Pick<Conversion, Needs>, progress: Progress): Promise<Conversion[Gives]> | Conversion[Gives];
  /** Its line, from what it gave. */
  summary(out: NonNullable<Conversion[Gives]>, c: Pick<Conversion, Needs>): string;
  /** Lines of detail printed after its line. */
  notes?(out: NonNullable<Conversion[Gives]>, c: Pick<Conversion, Needs>): string[];
  /** Warnings what it gave earns (said when known, and kept in the report). */
  warnings?(out: NonNullable<Conversion[Gives]>, c: Pick<Conversion, Needs>): string[];
  /** Its fields in layer k's row of the report (also when it did not run: then `out` is null). */
  layerReport?(out: Conversion[Gives], k: number, c: Pick<Conversion, Needs>): Record<string, unknown>;
}

/** A stage of any shape, as the pipeline runs it. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyStage = Stage<any, keyof Conversion>;

/** Defines a stage (the identity: it lets TypeScript infer and check what the stage reads and gives). */
export function stage<Needs extends keyof Conversion, Gives extends keyof Conversion>(s: Stage<Needs, Gives>): Stage<Needs, Gives> {
  return s;
}
