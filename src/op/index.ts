// The op contract of ai.moefy::DynamicMoE (docs/dynamic-moe.md): names, layout rule, activation, function body.
export * from './contract';
export * from './activation';
export { dynamicMoeFunction, emitActivation, FunctionBodyBuilder } from './function-body';
