/**
 * A user-facing error: its message is one line that the CLI prints without a stack trace.
 */
export class MoefyError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MoefyError';
  }
}
