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
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const opts = {
    level,
    base: undefined,
    redact: { paths: REDACT, censor: '[redacted]' },
  };
  return destination ? pino(opts, destination) : pino(opts);
}
