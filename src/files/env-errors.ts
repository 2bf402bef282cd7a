// Errors of the environment (permissions, a full disk, a missing file or folder) are the user's to fix: one line
// naming the path, never "internal error". Node's own messages name the syscall, not always the path (ENOSPC on
// write names nothing), so the places that write wrap their errors with the path they were writing.
import { MoefyError } from '../errors';

const WHY: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  ENOENT: 'no such file or folder',
  ENOTDIR: 'a part of the path is not a folder',
  EISDIR: 'is a folder',
  EEXIST: 'already exists',
  EMFILE: 'too many open files',
  ENAMETOOLONG: 'file name too long',
  EFBIG: 'file too large for this file system',
  EIO: 'input/output error',
  ELOOP: 'too many symbolic links',
  EBUSY: 'resource busy',
  ENXIO: 'no such device',
  ETXTBSY: 'file busy',
};

/** The errno code of an environmental error, or null when `e` is something else (a bug, a MoefyError). */
export function envCode(e: unknown): string | null {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return typeof code === 'string' && code in WHY ? code : null;
}

/**
 * `e` as one line naming `where` (the user's path, e.g. "-o out.onnx" or "out.onnx.data") when it is environmental;
 * anything else is returned unchanged.
 */
export function envError(e: unknown, where: string, doing = 'cannot write'): unknown {
  const code = envCode(e);
  if (!code) return e;
  return new MoefyError(`${where}: ${doing}: ${WHY[code]} (${code})`);
}

/** The fallback for an environmental error nothing wrapped: the path Node names, if any. */
export function envErrorLine(e: unknown): string | null {
  const code = envCode(e);
  if (!code) return null;
  const p = (e as NodeJS.ErrnoException).path;
  return p ? `${p}: ${WHY[code]} (${code})` : `${WHY[code]} (${code})`;
}

/** Runs `f`, turning an environmental error into one line naming `where`. */
export function withPath<T>(where: string, f: () => T, doing?: string): T {
  try {
    return f();
  } catch (e) {
    throw envError(e, where, doing);
  }
}
