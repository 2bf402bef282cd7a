/** A problem with the user's input or request: printed as one line, without a stack trace unless --verbose. */
export class MoefyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MoefyError';
  }
}
