import type { KeyCache } from './directory/key-cache.js';
import type { CheckService } from './service/check-service.js';

// A minimal Prometheus text exposition of counters the process already keeps. Tenant ids never appear as
// labels (unbounded cardinality); codes and tiers do.

export interface MetricsSources {
  readonly checkService: CheckService;
  readonly keyCache: KeyCache;
}

function line(name: string, help: string, type: 'counter' | 'gauge', samples: Array<[string, number]>): string {
  const out = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
  for (const [labels, v] of samples) out.push(`${name}${labels} ${v}`);
  return out.join('\n');
}

export function renderMetrics({ checkService, keyCache }: MetricsSources): string {
  const decisions = [...checkService.decisions.entries()].map(
    ([k, v]) => [k, v] as [string, number],
  );
  const s = keyCache.stats;
  return (
    [
      line('usage_limiter_check_decisions_total', 'Check decisions by outcome, code and tier.', 'counter', decisions),
      line('usage_limiter_store_errors_total', 'Counter store failures or timeouts during a Check.', 'counter', [
        ['', checkService.stats.storeErrors],
      ]),
      line('usage_limiter_directory_errors_total', 'Directory lookups that failed during a Check.', 'counter', [
        ['', checkService.stats.directoryErrors],
      ]),
      line('usage_limiter_key_cache_lookups_total', 'Key cache lookups by result.', 'counter', [
        ['{result="hit"}', s.hits],
        ['{result="miss"}', s.misses],
      ]),
      line('usage_limiter_key_cache_entries', 'Keys held in the in-process cache.', 'gauge', [['', keyCache.size]]),
    ].join('\n') + '\n'
  );
}
