/** A submit refused for its input: one line naming the input and what is wrong, exit 2, nothing registered. */
export class SubmitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SubmitError';
  }
}
