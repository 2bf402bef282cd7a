import * as fs from 'node:fs';
import type { CommandModule } from 'yargs';
import { MoefyError } from '../../errors';
import { libPath } from '../../runtime';

/** `moefy lib-path`: prints the absolute path of libmoefy_ops.so (for register_custom_ops_library in Python/C++). */
const command: CommandModule<object, object> = {
  command: 'lib-path',
  describe: 'Print the absolute path of the custom-op library libmoefy_ops.so',
  builder: (y) => y,
  handler: () => {
    const p = libPath();
    if (!fs.existsSync(p)) throw new MoefyError(`${p} is not built yet: run npm run build`);
    process.stdout.write(`${p}\n`);
  },
};

export default command;
