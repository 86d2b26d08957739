import type { LogEvent } from '../core/decide.js';
import type { Logger } from '../logger.js';

// Log lines shaped like the seed transcript's. Field names and messages are part of the public contract:
// dashboards and alert rules match on them.

export function logEvent(logger: Logger, e: LogEvent): void {
  switch (e.kind) {
    case 'read_rate_exceeded':
      logger.warn(
        { tenantId: e.tenantId, endpoint: e.endpoint, limit: e.limit, count: e.count },
        '[billing] GET rate limit exceeded',
      );
      return;
    case 'usage_limit_exceeded':
      logger.warn(
        { event: 'usage.limit_exceeded', tenantId: e.tenantId, endpoint: e.endpoint, usage: e.usage, limit: e.limit },
        '[billing] Usage limit exceeded',
      );
      return;
    case 'threshold':
      logger.info(
        {
          event: 'usage.threshold',
          tenantId: e.tenantId,
          endpoint: e.endpoint,
          threshold: e.threshold,
          usage: e.usage,
          limit: e.limit,
        },
        `Usage threshold ${Math.round(e.threshold * 100)}% reached`,
      );
      return;
  }
}
