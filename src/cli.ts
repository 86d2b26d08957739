import { parseArgs } from 'node:util';
import { KEYS_USAGE } from './cli/keys-usage.js';
import { ConfigError, loadConfig } from './config/env.js';
import { createLogger } from './logger.js';
import path from 'node:path';

// Each command imports what it needs when it runs: the server's module graph (drizzle, PGlite, Stripe,
// ioredis, OpenTelemetry) costs about a second to load, which `check` and `keys` should not pay.
const applyFile = async (...a: Parameters<typeof import('./admin/apply.js').applyFile>) => (await import('./admin/apply.js')).applyFile(...a);
const startApp = async (...a: Parameters<typeof import('./app.js').startApp>) => (await import('./app.js')).startApp(...a);
const runReporter = async (...a: Parameters<typeof import('./billing/run-reporter.js').runReporter>) =>
  (await import('./billing/run-reporter.js')).runReporter(...a);
const sendCheck = async (...a: Parameters<typeof import('./cli/check-command.js').sendCheck>) =>
  (await import('./cli/check-command.js')).sendCheck(...a);
const renderCheckResponse = async (...a: Parameters<typeof import('./cli/check-command.js').renderCheckResponse>) =>
  (await import('./cli/check-command.js')).renderCheckResponse(...a);
const keysCommand = async (...a: Parameters<typeof import('./cli/keys-command.js').keysCommand>) =>
  (await import('./cli/keys-command.js')).keysCommand(...a);
const alertsCommand = async (...a: Parameters<typeof import('./cli/keys-command.js').alertsCommand>) =>
  (await import('./cli/keys-command.js')).alertsCommand(...a);
const openDatabase = async (...a: Parameters<typeof import('./db/client.js').openDatabase>) =>
  (await import('./db/client.js')).openDatabase(...a);
const runMigrations = async (...a: Parameters<typeof import('./db/migrate.js').runMigrations>) =>
  (await import('./db/migrate.js')).runMigrations(...a);
const shutdownInstalledTelemetry = async () => (await import('./telemetry/telemetry.js')).shutdownInstalledTelemetry();

const USAGE = `usage-limiter — Envoy ext_authz server for API keys, read-rate limits and monthly quotas

Commands:
  serve                      run the gRPC (GRPC_PORT, 9191) and HTTP (HTTP_PORT, 8081) servers (default)
  migrate                    apply database migrations and exit
  apply -f FILE.yaml         upsert tiers, tenants and keys from FILE (all or nothing)
  report [--once]            report settled usage to Stripe, alone (serve runs the same reporter too)
  check --key K [--method GET] [--path /usage] [--target 127.0.0.1:9191]
        [--header name:value ...] [--request-id ID] [--timeout-ms 2000]
                             send one Envoy-shaped CheckRequest and print the answer as HTTP
${KEYS_USAGE}

Configuration comes from environment variables; see the README's configuration table.`;

function databaseOptions(config: ReturnType<typeof loadConfig>) {
  return config.databaseUrl
    ? { url: config.databaseUrl }
    : { dataDir: path.resolve(config.dataDir, 'pglite') };
}

async function serve(): Promise<number> {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const app = await startApp(config, { logger });
  // Never let a stray rejection or exception take down a process that is answering Envoy: log it loudly.
  process.on('unhandledRejection', (err) => logger.error({ event: 'process.unhandled_rejection', err: String(err) }, 'unhandled rejection'));
  await new Promise<void>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      logger.info({ signal: sig }, 'signal received');
      // Telemetry last, so the spans of the drained Checks are exported too.
      void app
        .stop()
        .then(() => shutdownInstalledTelemetry())
        .then(() => logger.flush(() => resolve()));
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  return 0;
}

async function migrate(): Promise<number> {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const db = await openDatabase({ ...databaseOptions(config), logger });
  try {
    await runMigrations(db);
    logger.info('migrations applied');
  } finally {
    await db.close();
  }
  return 0;
}

async function apply(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { file: { type: 'string', short: 'f' } }, strict: true });
  if (!values.file) throw new Error('apply needs -f FILE.yaml');
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const db = await openDatabase({ ...databaseOptions(config), logger });
  try {
    if (config.migrateOnStart) await runMigrations(db);
    const summary = await applyFile(db, values.file);
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  } finally {
    await db.close();
  }
  return 0;
}

async function check(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      key: { type: 'string' },
      method: { type: 'string', default: 'GET' },
      path: { type: 'string', default: '/usage' },
      target: { type: 'string' },
      header: { type: 'string', multiple: true, default: [] },
      'request-id': { type: 'string' },
      'timeout-ms': { type: 'string', default: '2000' },
    },
    strict: true,
  });
  const headers = (values.header ?? []).map((h) => {
    const i = h.indexOf(':');
    if (i <= 0) throw new Error(`--header must be name:value, got "${h}"`);
    return [h.slice(0, i).trim(), h.slice(i + 1).trim()] as const;
  });
  const timeoutMs = Number(values['timeout-ms']);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error('--timeout-ms must be a positive number');
  const res = await sendCheck({
    key: values.key,
    method: (values.method ?? 'GET').toUpperCase(),
    path: values.path ?? '/usage',
    target: values.target ?? `127.0.0.1:${process.env.GRPC_PORT ?? 9191}`,
    headers,
    requestId: values['request-id'],
    timeoutMs,
  });
  process.stdout.write(`${await renderCheckResponse(res)}\n`);
  return 0;
}

async function report(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { once: { type: 'boolean', default: false } }, strict: true });
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  try {
    return await runReporter(config, logger, { once: values.once === true });
  } finally {
    logger.flush();
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command = 'serve', ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        return await serve();
      case 'migrate':
        return await migrate();
      case 'apply':
        return await apply(rest);
      case 'check':
        return await check(rest);
      case 'report':
        return await report(rest);
      case 'keys':
      case 'alerts': {
        const config = loadConfig();
        const logger = createLogger(config.logLevel);
        const openDb = async () => {
          const db = await openDatabase({ ...databaseOptions(config), logger });
          if (config.migrateOnStart) await runMigrations(db);
          return db;
        };
        const io = { out: (t: string) => process.stdout.write(`${t}\n`), err: (t: string) => process.stderr.write(`${t}\n`) };
        return command === 'keys'
          ? await keysCommand(rest, openDb, io)
          : await alertsCommand(rest, config.alertWebhookSecret, openDb, io);
      }
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(`${USAGE}\n`);
        return 0;
      default:
        process.stderr.write(`unknown command "${command}"\n\n${USAGE}\n`);
        return 2;
    }
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`usage-limiter: ${err.message}\n`);
      return 78; // EX_CONFIG
    }
    // An option the command does not take, or one missing its value (node:util parseArgs): a usage error,
    // answered as an unknown command is, with where to look.
    if (isArgumentError(err)) {
      process.stderr.write(`usage-limiter ${command}: ${err.message}\n(usage-limiter --help lists every command's options)\n`);
      return 2;
    }
    throw err;
  }
}

function isArgumentError(err: unknown): err is Error {
  const code = (err as { code?: unknown } | null)?.code;
  return err instanceof Error && typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_');
}
