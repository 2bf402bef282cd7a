// The layering rules of src/ (README, "Code layout"), checked on the import graph that ts-morph reads: forbidden
// edges between layers, and second definitions of the op contract outside src/op.
import * as path from 'node:path';
import { Node, Project, SourceFile, SyntaxKind } from 'ts-morph';

export type Layer =
  | 'onnx' | 'ir' | 'op' | 'errors' | 'files' | 'format' | 'io' | 'analysis' | 'calib' | 'stages' | 'passes' | 'options'
  | 'pipeline' | 'inspect' | 'runtime' | 'eval' | 'cli' | 'index';

/** The layer of a file under src/ (path relative to src/, forward slashes). */
export function layerOf(rel: string): Layer | null {
  const top = rel.split('/')[0].replace(/\.ts$/, '');
  const map: Record<string, Layer> = {
    onnx: 'onnx', ir: 'ir', op: 'op', errors: 'errors', files: 'files', format: 'format', io: 'io', analysis: 'analysis', calib: 'calib',
    stages: 'stages', passes: 'passes', 'convert-options': 'options', pipeline: 'pipeline', inspect: 'inspect',
    runtime: 'runtime', eval: 'eval', cli: 'cli', index: 'index',
  };
  return map[top] ?? null;
}

const ABOVE_IR: Layer[] = ['op', 'format', 'io', 'analysis', 'calib', 'stages', 'passes', 'options', 'pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'];

/** What each layer must not import. */
export const FORBIDDEN: Record<Layer, Layer[]> = {
  // Serialisation and the IR sit at the bottom.
  onnx: ABOVE_IR,
  ir: ABOVE_IR,
  // The op contract is a leaf beside them (its function body is written as protos).
  op: ['ir', ...ABOVE_IR.filter((l) => l !== 'op')],
  errors: ['onnx', 'ir', 'files', ...ABOVE_IR],
  // Temporary paths, atomic writes and environmental errors: below the serialisation, which writes through them.
  files: ['onnx', 'ir', ...ABOVE_IR],
  format: ['onnx', 'ir', 'errors', ...ABOVE_IR.filter((l) => l !== 'format')],
  io: ['analysis', 'calib', 'stages', 'passes', 'pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'],
  analysis: ['calib', 'stages', 'passes', 'pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'],
  calib: ['stages', 'passes', 'pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'],
  stages: ['passes', 'pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'],
  passes: ['pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'],
  options: ['onnx', 'ir', 'analysis', 'calib', 'stages', 'passes', 'pipeline', 'inspect', 'runtime', 'eval', 'cli', 'index'],
  pipeline: ['runtime', 'eval', 'cli', 'index'],
  inspect: ['stages', 'passes', 'pipeline', 'runtime', 'eval', 'cli', 'index'],
  // The runtime never rewrites or calibrates a model.
  runtime: ['analysis', 'calib', 'stages', 'passes', 'pipeline', 'inspect', 'eval', 'cli', 'index'],
  eval: ['stages', 'passes', 'pipeline', 'cli', 'index'],
  cli: ['index'],
  index: ['cli'],
};

/** Relative module specifiers of a file: imports, re-exports, require() and import() calls. */
function specifiers(sf: SourceFile): string[] {
  const out: string[] = [];
  for (const d of sf.getImportDeclarations()) out.push(d.getModuleSpecifierValue());
  for (const d of sf.getExportDeclarations()) {
    const m = d.getModuleSpecifierValue();
    if (m) out.push(m);
  }
  for (const c of sf.getDescendantsOfKind(SyntaxKind.CallExpression)) {
    const callee = c.getExpression().getText();
    const arg = c.getArguments()[0];
    if ((callee === 'require' || c.getExpression().getKind() === SyntaxKind.ImportKeyword) && arg && Node.isStringLiteral(arg)) out.push(arg.getLiteralValue());
  }
  return out.filter((s) => s.startsWith('.'));
}

export interface Violation {
  file: string;
  what: string;
}

/** Forbidden edges between the layers of the files under `srcDir`. */
export function forbiddenEdges(project: Project, srcDir: string): Violation[] {
  const out: Violation[] = [];
  for (const sf of project.getSourceFiles()) {
    const rel = path.relative(srcDir, sf.getFilePath()).split(path.sep).join('/');
    if (rel.startsWith('..')) continue;
    const from = layerOf(rel);
    if (!from) {
      out.push({ file: rel, what: 'belongs to no layer (add it to test/helpers/layering.ts)' });
      continue;
    }
    for (const spec of specifiers(sf)) {
      const target = path.relative(srcDir, path.resolve(path.dirname(sf.getFilePath()), spec)).split(path.sep).join('/');
      if (target.startsWith('..')) continue; // package.json and the like
      const to = layerOf(target);
      if (to && FORBIDDEN[from].includes(to)) out.push({ file: rel, what: `${from} imports ${to} ('${spec}')` });
    }
  }
  return out;
}

/** Literal values that belong to the op contract (src/op) alone. */
const CONTRACT_LITERALS = ['ai.moefy', 'DynamicMoE', 'moe_threshold'];

/** `Math.fround(a * b)`: a float32 product, as the routing rule's t·max. */
function isFloat32Product(n: Node): boolean {
  if (!Node.isCallExpression(n) || n.getExpression().getText() !== 'Math.fround') return false;
  let arg = n.getArguments()[0];
  while (arg && Node.isParenthesizedExpression(arg)) arg = arg.getExpression();
  return !!arg && Node.isBinaryExpression(arg) && arg.getOperatorToken().getKind() === SyntaxKind.AsteriskToken;
}

const COMPARISONS = new Set([SyntaxKind.GreaterThanEqualsToken, SyntaxKind.GreaterThanToken, SyntaxKind.LessThanEqualsToken, SyntaxKind.LessThanToken]);

/**
 * Second definitions of the op contract outside src/op: the domain, op name or threshold input name as a literal
 * value (prose inside a longer message is fine), `moe_threshold` as an identifier (e.g. a feed's property name), a
 * declaration of a scale-of-position rule (`scaleOf…`), or a routing rule: a comparison with a routing cut (a float32
 * product `Math.fround(t * max)`, directly or through a variable holding one, or a variable named `cut`). KV-cache
 * name patterns outside src/analysis, which owns them.
 */
export function contractCopies(project: Project, srcDir: string): Violation[] {
  const out: Violation[] = [];
  for (const sf of project.getSourceFiles()) {
    const rel = path.relative(srcDir, sf.getFilePath()).split(path.sep).join('/');
    if (rel.startsWith('..') || rel.startsWith('op/')) continue;
    const at = (n: Node) => `${rel}:${n.getStartLineNumber()}`;
    const cuts = new Set(['cut']);
    for (const d of sf.getDescendantsOfKind(SyntaxKind.VariableDeclaration)) {
      const init = d.getInitializer();
      if (init && isFloat32Product(init)) cuts.add(d.getName());
    }
    const isCut = (x: Node) => isFloat32Product(x) || (Node.isIdentifier(x) && cuts.has(x.getText()));
    for (const n of sf.getDescendants()) {
      if (Node.isBinaryExpression(n) && COMPARISONS.has(n.getOperatorToken().getKind()) && (isCut(n.getLeft()) || isCut(n.getRight()))) {
        out.push({ file: at(n), what: `a routing rule '${n.getText()}' outside src/op (call src/op/routing.ts)` });
        continue;
      }
      if (Node.isStringLiteral(n) || Node.isNoSubstitutionTemplateLiteral(n)) {
        const v = n.getLiteralValue();
        if (CONTRACT_LITERALS.some((c) => v === c || v.startsWith(`${c}:`) || v.startsWith(`${c}.`))) out.push({ file: at(n), what: `the op contract's '${v}' as a literal` });
      } else if (Node.isIdentifier(n) && n.getText() === 'moe_threshold') {
        out.push({ file: at(n), what: "the threshold input name 'moe_threshold' as an identifier" });
      } else if (isFunctionNamed(n, /^scaleOf/i)) {
        out.push({ file: at(n), what: `a scale-of-position rule '${n.getName()}' outside src/op` });
      } else if (Node.isRegularExpressionLiteral(n) && /past_|present_/.test(n.getLiteralText()) && !rel.startsWith('analysis/')) {
        out.push({ file: at(n), what: `the KV-cache names ${n.getLiteralText()} outside src/analysis` });
      }
    }
  }
  return out;
}

/** A function (declaration, method, or variable holding an arrow/function expression) whose name matches. */
function isFunctionNamed(n: Node, re: RegExp): n is Node & { getName(): string } {
  if (Node.isFunctionDeclaration(n) || Node.isMethodDeclaration(n)) return re.test(n.getName() ?? '');
  if (Node.isVariableDeclaration(n)) {
    const init = n.getInitializer();
    return !!init && (Node.isArrowFunction(init) || Node.isFunctionExpression(init)) && re.test(n.getName());
  }
  return false;
}

/** The project's src/ files, read without type-checking (only syntax is needed). */
export function srcProject(srcDir: string): Project {
  const project = new Project({ skipAddingFilesFromTsConfig: true, skipFileDependencyResolution: true, compilerOptions: { allowJs: false } });
  project.addSourceFilesAtPaths(path.join(srcDir, '**/*.ts'));
  return project;
}
