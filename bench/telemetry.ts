// What telemetry costs the Check: the real server (compiled dist/, Redis-backed, 10,000 tenants) under the
// closed-loop load of bench/loadgen.mjs, with and without OTLP export, variants interleaved so that drift on
// the machine hits them alike. An OTLP sink in this process accepts (and counts) what the server exports.
//
//   npm run build && npx tsx bench/telemetry.ts        (TELEMETRY_BENCH_SECONDS, default 10; ROUNDS, default 2)
//
// Variants:
//   metrics only       no OTEL_* set: Prometheus /metrics, no tracer, no instrumentation (the default)
//   OTLP, 1% sampled   traces and metrics exported; OTEL_TRACES_SAMPLER=traceidratio, ARG 0.01
//   OTLP, every Check  traces and metrics exported, every Check sampled (grpc + check + ioredis spans)
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import postgres from 'postgres';
import { corpus, population } from './corpus.js';
import { freePort } from '../test/helpers/server-process.js';

const SECONDS = Number(process.env.TELEMETRY_BENCH_SECONDS ?? 10);
const ROUNDS = Number(process.env.ROUNDS ?? 2);
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const ROOT = path.resolve(import.meta.dirname, '..');

const log = (m: string) => process.stderr.write(`[telemetry-bench] ${m}\n`);

async function startChild(cmd: string, args: string[], env: NodeJS.ProcessEnv, ready: RegExp, logFile: string): Promise<ChildProcess> {
  const fd = openSync(logFile, 'w');
  const child = spawn(cmd, args, { env, cwd: ROOT, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const deadline = Date.now() + 60_000;
  while (!ready.test(readFileSync(logFile, 'utf8'))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${cmd} did not start:\n${readFileSync(logFile, 'utf8').slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return child;
}

function load(target: string, corpusFile: string, seconds: number): { ratePerSecond: number; sent: number; errors: number; latencyMs: Record<string, number> } {
  const out = execFileSync(process.execPath, [path.join(ROOT, 'bench/loadgen.mjs'), '--target', target, '--corpus', corpusFile, '--seconds', String(seconds)], {
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').at(-1) ?? '{}');
}

async function main(): Promise<void> {
  const work = mkdtempSync(path.join(os.tmpdir(), 'ul-telemetry-bench-'));
  const dbName = `ul_tbench_${process.pid}`;
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(ADMIN_URL);
  dbUrl.pathname = `/${dbName}`;
  const children: ChildProcess[] = [];
  const exported = { traces: 0, metrics: 0, bytes: 0 };
  const sink = http.createServer((req, res) => {
    req.on('data', (c: Buffer) => (exported.bytes += c.length));
    req.on('end', () => {
      if (req.url?.includes('traces')) exported.traces++;
      else exported.metrics++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  try {
    const redisPort = await freePort();
    children.push(await startChild('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], process.env, /Ready to accept/, path.join(work, 'redis.log')));
    const sinkPort = await freePort();
    await new Promise<void>((r) => sink.listen(sinkPort, '127.0.0.1', r));

    const pop = population(10_000);
    writeFileSync(path.join(work, 'tenants.yaml'), pop.yaml);
    const baseEnv = { PATH: process.env.PATH, HOME: process.env.HOME, DATABASE_URL: dbUrl.toString(), LOG_LEVEL: 'info' };
    execFileSync(process.execPath, ['bin/usage-limiter.js', 'apply', '-f', path.join(work, 'tenants.yaml')], { cwd: ROOT, env: baseEnv, stdio: 'ignore' });
    const corpusFile = path.join(work, 'corpus.bin');
    writeFileSync(corpusFile, corpus(pop, 20_000).file);

    const otlp = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`, OTEL_METRIC_EXPORT_INTERVAL: '5000' };
    const variants: Array<{ name: string; env: Record<string, string> }> = [
      { name: 'metrics only (no OTEL_*)', env: {} },
      { name: 'OTLP, 1% of Checks traced', env: { ...otlp, OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.01' } },
      { name: 'OTLP, every Check traced', env: otlp },
    ];
    const results: Record<string, number[]> = Object.fromEntries(variants.map((v) => [v.name, []]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const v of variants) {
        const grpcPort = await freePort();
        const httpPort = await freePort();
        const server = await startChild(
          process.execPath,
          ['bin/usage-limiter.js', 'serve'],
          {
            ...baseEnv,
            ...v.env,
            REDIS_URL: `redis://127.0.0.1:${redisPort}`,
            REDIS_KEY_PREFIX: `r${round}:${variants.indexOf(v)}:`,
            GRPC_PORT: String(grpcPort),
            HTTP_PORT: String(httpPort),
            GRPC_HOST: '127.0.0.1',
            HTTP_HOST: '127.0.0.1',
            MIGRATE_ON_START: 'false',
          },
          /usage-limiter serving/,
          path.join(work, `server-${round}-${variants.indexOf(v)}.log`),
        );
        const target = `127.0.0.1:${grpcPort}`;
        for (let sent = 0; sent < 25_000; ) sent += load(target, corpusFile, 3).sent;
        const r = load(target, corpusFile, SECONDS);
        results[v.name]!.push(r.ratePerSecond);
        log(`round ${round + 1}, ${v.name}: ${r.ratePerSecond} Checks/s, p50 ${r.latencyMs.p50?.toFixed(2)} ms, p99 ${r.latencyMs.p99?.toFixed(2)} ms, errors ${r.errors}`);
        server.kill('SIGTERM');
        await new Promise((res) => server.once('exit', res));
      }
    }
    const base = median(results[variants[0]!.name]!);
    const summary = variants.map((v) => {
      const m = median(results[v.name]!);
      return { variant: v.name, checksPerSecond: m, runs: results[v.name], relative: Number((m / base).toFixed(3)) };
    });
    const out = { when: new Date().toISOString(), machine: { cpus: os.cpus().length, node: process.version }, seconds: SECONDS, summary, otlpRequestsReceived: exported };
    mkdirSync(path.join(ROOT, 'bench/results'), { recursive: true });
    writeFileSync(path.join(ROOT, 'bench/results/telemetry.json'), `${JSON.stringify(out, null, 2)}\n`);
    process.stdout.write(`\n${summary.map((s) => `${s.variant.padEnd(28)} ${String(s.checksPerSecond).padStart(6)} Checks/s  (${(s.relative * 100).toFixed(1)}%)  runs ${JSON.stringify(s.runs)}`).join('\n')}\n`);
    process.stdout.write(`OTLP sink received ${exported.traces} trace and ${exported.metrics} metric requests (${(exported.bytes / 1e6).toFixed(1)} MB)\n`);
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
    sink.close();
    await new Promise((r) => setTimeout(r, 300));
    await admin.unsafe(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
    rmSync(work, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : Math.round((s[mid - 1]! + s[mid]!) / 2);
}

main().catch((err: unknown) => {
  process.stderr.write(`telemetry bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
