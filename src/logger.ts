import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

// Fields that could ever hold a secret are censored even if a caller logs the wrong object by mistake.
// The first line of defence is not logging them at all: the Check logs tenant ids and key prefixes only.
//
// Why a formatter and not pino's `redact` option: pino 10's redaction clones every logged object, and
// every denied read logs a line, so it was the largest single allocation site of the Check (11% of all
// bytes allocated under load). This looks at the keys of the logged object and of the objects directly
// inside it, allocates nothing when no secret-named field is present (every Check's line), and copies
// only the objects that need a field censored, so the caller's object is never changed.
const CENSOR = '[redacted]';
/** Censored at the top level and one level down (`*.apiKey`, `config.redisUrl`, ...). */
const SECRET_FIELDS = new Set([
  'apiKey',
  'stripeSecretKey',
  'stripeWebhookSecret',
  'alertWebhookSecret',
  'databaseUrl',
  'redisUrl',
]);
/** Censored inside a `headers` object at the top level or one level down. */
const SECRET_HEADERS = new Set(['authorization', 'x-api-key']);

type Fields = Record<string, unknown>;

function isPlainObject(v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Error);
}

/** `o` with the secret headers censored, or `o` itself when it holds none. */
function censorHeaders(o: Fields): Fields {
  let out: Fields | null = null;
  for (const k in o) {
    if (SECRET_HEADERS.has(k.toLowerCase()) && o[k] !== undefined) (out ??= { ...o })[k] = CENSOR;
  }
  return out ?? o;
}

const plainCopy = (o: Fields): Fields => ({ ...o });
/**
 * An Error's copy keeps its prototype and every own property (message and stack included), so pino's
 * error serializer still sees an Error.
 */
const errorCopy = (o: Fields): Fields =>
  Object.create(Object.getPrototypeOf(o) as object, Object.getOwnPropertyDescriptors(o)) as Fields;

/**
 * `o` with secret fields censored at this level (and `key` too at the top), or `o` itself when it holds
 * none; a changed object is copied first with `copy`.
 */
function censorLevel(o: Fields, top: boolean, copy: (o: Fields) => Fields = plainCopy): Fields {
  let out: Fields | null = null;
  for (const k in o) {
    const v = o[k];
    let censored: unknown = v;
    if (SECRET_FIELDS.has(k) || (top && k === 'key')) censored = v === undefined ? v : CENSOR;
    else if (k === 'headers' && isPlainObject(v)) censored = censorHeaders(v);
    else if (top && isPlainObject(v)) censored = censorLevel(v, false);
    else if (top && v instanceof Error) censored = censorLevel(v as unknown as Fields, false, errorCopy);
    if (censored !== v) (out ??= copy(o))[k] = censored;
  }
  return out ?? o;
}

/** pino's `formatters.log`: the logged object with every secret-named field censored. */
export function censorSecrets(o: Fields): Fields {
  return censorLevel(o, true);
}

/**
 * pino JSON logs. `base` is dropped so that lines look like the seed's (`level`, fields, `msg`) plus `time`.
 * Without a destination, logs go to stdout through a buffered asynchronous writer: every denied read
 * logs a line (the seed's `[billing] GET rate limit exceeded`), and a write per line cost the Check a
 * thread-pool hand-off and a syscall (in the benchmark at moderate load, more than one futex wake per
 * Check). Lines collect up to 4 KiB and are written at least every 100 ms, so a quiet server still shows
 * each line within 0.1 s. pino flushes what is buffered when the process exits (also after an uncaught
 * exception); only a SIGKILL can lose the last 100 ms.
 * Call `logger.flush()` before exiting (the `serve` command does on shutdown).
 */
const LOG_BUFFER_BYTES = 4096;
const LOG_FLUSH_MS = 100;

export function createLogger(level: string, destination?: DestinationStream): Logger {
  const opts = {
    level,
    base: undefined,
    formatters: { log: censorSecrets },
  };
  const logger = pino(opts, destination ?? pino.destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES, periodicFlush: LOG_FLUSH_MS }));
  // A child's bindings are serialized once, when it is made, and pino gives children no formatter for
  // them: censor them on the way in. Children are made with Object.create, so theirs inherit this.
  const child = logger.child;
  logger.child = function censoredChild(this: Logger, bindings, options) {
    return child.call(this, censorSecrets(bindings), options);
  } as Logger['child'];
  return logger;
}
