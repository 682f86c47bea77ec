// Errors as values with a stable code, so callers branch on `code` and people read `message`.

/** A failure mtlsd can explain: `code` is stable (e.g. CONFIG_INVALID), `message` says what, where and what to do. */
export class MtlsdError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MtlsdError";
    this.code = code;
  }
}
