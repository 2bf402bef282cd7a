// Conversion settings that make tests fast: small routers, one epoch, few tokens, clustering by weights. Everything
// else is the one set of defaults (src/convert-options.ts) that convert() fills in.
import type { ConvertOptions } from '../../src/convert-options';

export const FAST = { routerWidth: 16, routerEpochs: 1, synthSamples: 2, maxTokens: 4096, clusterBy: 'weights' } as const satisfies Partial<ConvertOptions>;
