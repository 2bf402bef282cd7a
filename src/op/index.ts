// The op contract of ai.moefy::DynamicMoE (docs/dynamic-moe.md): names, layout rule, activation, routing rules,
// function body.
export * from './contract';
export * from './activation';
export * from './routing';
export { dynamicMoeFunction, emitActivation, FunctionBodyBuilder } from './function-body';
export type { FunctionBodyOptions } from './function-body';
