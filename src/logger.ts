import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

// Paths that could ever hold a secret are censored even if a caller logs the wrong object by mistake.
// The first line of defence is not logging them at all: the Check logs tenant ids and key prefixes only.
const REDACT = [
  'apiKey',
  '*.apiKey',
  'key',
  'headers["x-api-key"]',
  'headers.authorization',
  '*.headers["x-api-key"]',
  '*.headers.authorization',
  'stripeSecretKey',
  'stripeWebhookSecret',
  'config.stripeSecretKey',
  'config.stripeWebhookSecret',
  'config.databaseUrl',
  'config.redisUrl',
];

/**
 * pino JSON logs. `base` is dropped so that lines look like the seed's (`level`, fields, `msg`) plus `time`.
 * Without a destination, logs go to stdout through a buffered asynchronous writer: under load every
 * denied read logs a line, and a synchronous write per line would cost a syscall on the Check's thread.
 * No minimum buffer: lines written while a write is pending go out together, and an idle server still
 * shows each line at once.
 * Call `logger.flush()` before exiting (the `serve` command does on shutdown).
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const opts = {
    level,
    base: undefined,
    redact: { paths: REDACT, censor: '[redacted]' },
  };
  return pino(opts, destination ?? pino.destination({ dest: 1, sync: false }));
}
