// A small error vocabulary: a code (doubles as a metric label and log field), whether retrying may help,
// context that is safe to log, and the underlying cause.

export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'APPLY_INVALID'
  | 'DatabaseError'
  | 'CacheError'
  | 'NotFound'
  | 'UsageLimitExceeded'
  | 'BAD_REQUEST';

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly context: Readonly<Record<string, unknown>>;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { retryable?: boolean; context?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'AppError';
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.context = Object.freeze({ ...(opts.context ?? {}) });
  }
}

export function isAppError(err: unknown, code?: ErrorCode): err is AppError {
  return err instanceof AppError && (code === undefined || err.code === code);
}
