// LISTEN usage_limiter_directory (NOTIFYed by the directory_version triggers, drizzle/0004) on a dedicated
// connection, and ask the key cache to poll at once: a revoked key stops working on every replica within
// a few milliseconds of the commit, not at the next DIRECTORY_POLL_MS poll. The poll stays the fallback:
// notifications sent while this connection is down are lost, so every (re)connect also triggers a poll.
// Postgres only: an embedded PGlite database belongs to one process, which makes its own changes.
import { postgresClient } from '../db/client.js';
import type { Logger } from '../logger.js';

export const DIRECTORY_CHANNEL = 'usage_limiter_directory';

export interface ChangeListener {
  close(): Promise<void>;
}

export function listenForDirectoryChanges(url: string, onChange: () => void, logger: Logger): ChangeListener {
  const sql = postgresClient(url, {
    max: 1,
    connect_timeout: 5,
    connection: { application_name: 'usage-limiter-listen' },
  });
  let closed = false;
  let attempt: NodeJS.Timeout | null = null;
  let failing = false;

  // postgres.js re-issues LISTEN by itself after a dropped connection; `onlisten` runs on every (re)connect.
  const subscribe = () => {
    sql
      .listen(DIRECTORY_CHANNEL, () => onChange(), () => {
        if (failing) logger.info({ event: 'directory.listening' }, 'listening for directory changes again');
        failing = false;
        onChange();
      })
      .catch((err: unknown) => {
        if (closed) return;
        if (!failing) {
          logger.warn(
            { event: 'directory.listen_failed', err: err instanceof Error ? err.message : String(err) },
            'cannot LISTEN for directory changes; relying on the version poll',
          );
        }
        failing = true;
        // The first LISTEN never connected: try again later (reconnects after that are the driver's job).
        attempt = setTimeout(subscribe, 5_000);
        attempt.unref();
      });
  };
  subscribe();

  return {
    close: async () => {
      closed = true;
      if (attempt !== null) clearTimeout(attempt);
      await sql.end({ timeout: 2 });
    },
  };
}
